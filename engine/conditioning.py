"""Product conditioning: what one attempt does to the product before and after the generator.

This follows the authors' released sampler (docs/design.md, "The generation path", steps 1-4 and 7):

1. decode the cutout: RGBA, alpha is the product mask; RGB/JPEG, pixels with a channel at 255 are
   background (the authors' white keying);
2. lay it out with the authors' arithmetic: crop to the bounding box of alpha >= 128, fit its longer side
   into ``image_scale`` of the canvas with integer sizes, resize with ``cv2.INTER_AREA`` and centre it
   (``keep_loc`` keeps the original placement and only resizes);
3. masks: the inpaint mask is the inverted product mask dilated by a square kernel (20x20 at 512 px,
   scaled with the canvas), so the model may repaint a thin band over the border; the paste-back mask
   is the undilated inverse, ``m = 1 - alpha / 255``;
4. control image: canny edges (100/200) of the product with the background (alpha < 128) zeroed, three channels;
7. paste back: ``out = (1 - m) * product + m * generated``, so product pixels (alpha 255) come out
   bit-identical to the laid-out input.

Bad input raises :class:`ProductImageError` with the source named and one ``reason`` code; nothing
here can hang on a hostile file (sizes are checked from the header before pixels are decoded).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.config import ConditioningConfig

# PIL's own bomb guard would raise (or warn) on its own threshold; ours is checked explicitly below.
Image.MAX_IMAGE_PIXELS = None


class ProductImageError(ValueError):
    """A product image that cannot be used. ``reason`` is one of :attr:`REASONS`; ``source`` names it."""

    REASONS = {
        "empty_file": "the file has zero bytes",
        "file_too_large": "the file is larger than the configured byte limit",
        "undecodable": "the bytes are not a readable image",
        "too_many_pixels": "the header claims more pixels than the configured limit",
        "too_small": "the image or its product is smaller than the minimum side",
        "no_product_pixels": "no product pixels: fully transparent, or entirely pure white",
    }

    def __init__(self, source: str, reason: str, detail: str = ""):
        assert reason in self.REASONS, reason
        self.source, self.reason, self.detail = source, reason, detail
        message = f"{source}: {reason} ({detail or self.REASONS[reason]})"
        super().__init__(message)


@dataclass
class Condition:
    """The generator's inputs for one product, all on the ``size x size`` canvas."""

    product_rgba: np.ndarray
    """(S, S, 4) uint8: the laid-out product; alpha 0 where the background will be painted."""
    image: np.ndarray
    """(S, S, 3) uint8: the product composited on white, the pipeline's init image."""
    inpaint_mask: np.ndarray
    """(S, S) uint8 in {0, 255}: 255 = repaint (dilated background)."""
    control: np.ndarray
    """(S, S, 3) uint8: canny edges of the product on black."""


def decode_product(data: bytes, source: str, cfg: ConditioningConfig) -> np.ndarray:
    """Decode image bytes to an (H, W, 4) uint8 RGBA array whose alpha is the product mask.

    Grayscale, palette, 16-bit and CMYK images are converted; an image with an alpha channel uses it
    (unless it is fully opaque, then white-keying applies as for RGB); EXIF orientation is honoured.

    Raises:
        ProductImageError: see :attr:`ProductImageError.REASONS`.
    """
    rgba = decode_image(data, source, cfg)
    if not rgba[..., 3].any():
        raise ProductImageError(source, "no_product_pixels")
    return rgba


def decode_image(data: bytes, source: str, cfg: ConditioningConfig) -> np.ndarray:
    """``decode_product`` without the product-pixel check, for any image (e.g. a generated ad, whose RGB is
    ``[..., :3]``): the same size limits, conversions and (H, W, 4) uint8 output.

    Raises:
        ProductImageError: any reason but ``no_product_pixels``.
    """
    if len(data) == 0:
        raise ProductImageError(source, "empty_file")
    if len(data) > cfg.max_bytes:
        raise ProductImageError(source, "file_too_large", f"{len(data)} bytes > {cfg.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > cfg.max_pixels:
                raise ProductImageError(source, "too_many_pixels", f"{width}x{height} > {cfg.max_pixels} pixels")
            if min(width, height) < cfg.min_side:
                raise ProductImageError(source, "too_small", f"{width}x{height}, minimum side {cfg.min_side}")
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img)
            rgba = _to_rgba(img)
    except ProductImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise ProductImageError(source, "undecodable", f"{type(err).__name__}: {err}") from err
    return rgba


def _to_rgba(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 4) uint8 with alpha as the product mask."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit grayscale: PIL's convert("L") clips instead of scaling, which turns it white.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    rgba = np.array(img.convert("RGBA"), dtype=np.uint8)
    if not has_alpha or rgba[..., 3].min() == 255:
        rgba[..., 3] = white_key(rgba[..., :3])
    return rgba


PRODUCT_ALPHA = 128
"""A pixel belongs to the product when its alpha is at least this (the authors' ``alpha / 255 >= 0.5``)."""


def product_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """The product's bounding box ``(y1, y2, x1, x2)`` as the authors compute it, for the crop ``[y1:y2, x1:x2]``.

    ``y1``/``x1`` are the first and ``y2``/``x2`` the last row and column holding a pixel with alpha >=
    :data:`PRODUCT_ALPHA`, so the crop leaves out that last row and column, as theirs does. RFNet and the
    released ControlNet were trained on layouts made this way, so we keep the off-by-one.

    Raises:
        ProductImageError: no pixel reaches the alpha cut, or the box is one pixel thin (reason too_small);
            the authors fall back to the whole image there, which lays out a product too faint or thin to use.
    """
    mask = alpha >= PRODUCT_ALPHA
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ProductImageError("product", "too_small", f"no pixel with alpha >= {PRODUCT_ALPHA}")
    y1, y2, x1, x2 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if y1 == y2 or x1 == x2:
        raise ProductImageError("product", "too_small", f"product bounding box {x2 - x1 + 1}x{y2 - y1 + 1}")
    return y1, y2, x1, x2


def fit_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    """``(new_h, new_w)`` of an ``h x w`` crop fitted into ``max_side``, with the authors' integer arithmetic.

    The longer side becomes ``min(max_side, int(max_side / short * long))`` (a float quotient can land a
    hair under ``max_side``, and truncation then gives one pixel less, as in theirs); the shorter one is
    ``int(new_long / long * short)``. Never below 1 px.
    """
    if h >= w:
        new_h = min(max_side, int(max_side / w * h))
        new_w = int(new_h / h * w)
    else:
        new_w = min(max_side, int(max_side / h * w))
        new_h = int(new_w / w * h)
    return max(1, new_h), max(1, new_w)


def white_key(rgb: np.ndarray) -> np.ndarray:
    """The product mask of an image on white, as the authors' ``white_img_add_mask`` makes it: 255 where no
    channel is 255, else 0. A pixel with *any* channel at 255 (pure white, but also a saturated red or a
    clipped highlight) counts as background; RFNet and the released ControlNet saw masks made this way."""
    return np.where((rgb == 255).any(axis=-1), 0, 255).astype(np.uint8)


def layout(rgba: np.ndarray, cfg: ConditioningConfig, image_scale: float | None = None) -> np.ndarray:
    """Place the product on an empty (transparent) ``size x size`` canvas; returns (S, S, 4) uint8.

    Centre mode reproduces the authors' ``golden_ratio_center_zoom``: crop to :func:`product_box`, fit the
    crop into ``int(size * image_scale)`` with :func:`fit_size`, resize with ``cv2.INTER_AREA`` (on straight
    RGBA), and place it at ``x = (size - new_w) // 2``, ``y = int(size // 2 - new_h / 2)``.

    ``keep_loc`` resizes the whole image, as the authors' ``keep_loc`` does: ``INTER_AREA`` when shrinking,
    ``INTER_LANCZOS4`` when enlarging. A square source becomes the canvas exactly as theirs does. Theirs
    keeps a non-square source's aspect on a non-square canvas; ours is square, so the longer side is fitted
    to it and the image centred (docs/design.md, "The generation path").

    Raises:
        ProductImageError: the product is too faint or thin to lay out (reason too_small).
    """
    size = cfg.size
    scale_to = image_scale if image_scale is not None else cfg.image_scale
    canvas = np.zeros((size, size, 4), dtype=np.uint8)
    if cfg.keep_loc:
        h, w = rgba.shape[:2]
        if h == w:
            new_h = new_w = size
        else:
            new_h, new_w = fit_size(h, w, size)
        interpolation = cv2.INTER_LANCZOS4 if new_w > w else cv2.INTER_AREA
        resized = cv2.resize(np.ascontiguousarray(rgba), (new_w, new_h), interpolation=interpolation)
        top, left = (size - new_h) // 2, (size - new_w) // 2
    else:
        y1, y2, x1, x2 = product_box(rgba[..., 3])
        crop = np.ascontiguousarray(rgba[y1:y2, x1:x2])
        new_h, new_w = fit_size(*crop.shape[:2], int(size * scale_to))
        resized = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_AREA)
        top, left = int(size // 2 - new_h / 2), max(0, (size - new_w) // 2)
    canvas[top : top + new_h, left : left + new_w] = resized.reshape(new_h, new_w, 4)
    return canvas


def dilation_kernel(size: int, px_at_512: int = 20) -> int:
    """Side of the inpaint-mask dilation kernel for a ``size`` canvas (20 at 512, scaled linearly)."""
    return max(1, round(px_at_512 * size / 512))


def build_condition(product_rgba: np.ndarray, cfg: ConditioningConfig) -> Condition:
    """Masks, init image and control image for a laid-out (S, S, 4) uint8 product."""
    alpha = product_rgba[..., 3]
    rgb = product_rgba[..., :3]
    k = dilation_kernel(cfg.size, cfg.dilate_px_at_512)
    background = (255 - alpha).astype(np.uint8)
    dilated = cv2.dilate(background, np.ones((k, k), np.uint8))
    inpaint_mask = np.where(dilated >= 128, 255, 0).astype(np.uint8)
    a = alpha[..., None].astype(np.float32) / 255.0
    image = (a * rgb + (1.0 - a) * 255.0).round().astype(np.uint8)
    # The authors zero the background where alpha / 255 < 0.5, so a soft edge's faint fringe gives no edges.
    product_on_black = np.where(alpha[..., None] >= PRODUCT_ALPHA, rgb, 0).astype(np.uint8)
    edges = cv2.Canny(product_on_black, cfg.canny_low, cfg.canny_high)
    control = np.repeat(edges[..., None], 3, axis=-1)
    return Condition(product_rgba=product_rgba, image=image, inpaint_mask=inpaint_mask, control=control)


def paste_back(generated: np.ndarray, product_rgba: np.ndarray) -> np.ndarray:
    """Put the original product pixels back over a generated image with the undilated mask.

    Args:
        generated: (..., S, S, 3) uint8 or float in [0, 1].
        product_rgba: (..., S, S, 4) uint8, the laid-out product.

    Returns:
        (..., S, S, 3) uint8 where ``alpha == 255`` pixels equal the product exactly.
    """
    if generated.dtype != np.uint8:
        generated = (np.clip(generated, 0.0, 1.0) * 255.0).round()
    m = 1.0 - product_rgba[..., 3:4].astype(np.float32) / 255.0
    out = (1.0 - m) * product_rgba[..., :3].astype(np.float32) + m * generated.astype(np.float32)
    return out.round().astype(np.uint8)
