"""The batch runtime (SKU records -> conditions -> generate -> score -> regenerate -> outputs) and the
generator's model factory and product-conditioning path."""
