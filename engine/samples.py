"""The bundled sample product cutouts used by the demo, drawn procedurally (no downloaded data).

``python -m engine.samples DIR`` redraws them; the committed copies in ``engine/assets/samples`` were made
this way. Six RGBA cutouts (alpha = product) and one white-background JPEG, as real catalogs mix both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SAMPLES_DIR = Path(__file__).parent / "assets" / "samples"

# sku_id -> (caption, category)
SAMPLES = {
    "bottle-001": ("a glass bottle of olive oil, 25 cm tall", "kitchen"),
    "mug-002": ("a ceramic coffee mug, 10 cm tall", "kitchen"),
    "lamp-003": ("a desk lamp with a round shade, 45 cm tall", "home"),
    "chair-004": ("a wooden dining chair, 90 cm tall", "furniture"),
    "speaker-005": ("a portable bluetooth speaker, 18 cm wide", "electronics"),
    "vase-006": ("a tall porcelain flower vase, 35 cm tall", "home"),
    "box-007": ("a gift box with a ribbon, 20 cm wide", "fashion"),
}


def _draw(sku_id: str, size: int = 256) -> Image.Image:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size
    if sku_id.startswith("bottle"):
        d.rectangle([s * 0.38, s * 0.35, s * 0.62, s * 0.92], fill=(70, 120, 40, 255))
        d.rectangle([s * 0.45, s * 0.12, s * 0.55, s * 0.36], fill=(60, 105, 35, 255))
        d.rectangle([s * 0.44, s * 0.08, s * 0.56, s * 0.14], fill=(180, 150, 60, 255))
        d.rectangle([s * 0.40, s * 0.55, s * 0.60, s * 0.72], fill=(235, 225, 190, 255))
    elif sku_id.startswith("mug"):
        d.ellipse([s * 0.62, s * 0.42, s * 0.85, s * 0.70], outline=(200, 60, 50, 255), width=int(s * 0.05))
        d.rectangle([s * 0.25, s * 0.35, s * 0.68, s * 0.80], fill=(210, 70, 55, 255))
        d.ellipse([s * 0.25, s * 0.30, s * 0.68, s * 0.40], fill=(120, 40, 30, 255))
    elif sku_id.startswith("lamp"):
        d.polygon(
            [(s * 0.30, s * 0.35), (s * 0.70, s * 0.35), (s * 0.60, s * 0.12), (s * 0.40, s * 0.12)],
            fill=(240, 200, 90, 255),
        )
        d.rectangle([s * 0.48, s * 0.35, s * 0.52, s * 0.82], fill=(60, 60, 70, 255))
        d.ellipse([s * 0.33, s * 0.80, s * 0.67, s * 0.90], fill=(50, 50, 60, 255))
    elif sku_id.startswith("chair"):
        wood = (140, 90, 50, 255)
        d.rectangle([s * 0.30, s * 0.10, s * 0.36, s * 0.90], fill=wood)
        d.rectangle([s * 0.64, s * 0.10, s * 0.70, s * 0.90], fill=wood)
        d.rectangle([s * 0.30, s * 0.50, s * 0.70, s * 0.57], fill=(160, 105, 60, 255))
        d.rectangle([s * 0.30, s * 0.15, s * 0.70, s * 0.22], fill=wood)
        d.rectangle([s * 0.30, s * 0.28, s * 0.70, s * 0.33], fill=wood)
    elif sku_id.startswith("speaker"):
        d.rounded_rectangle([s * 0.15, s * 0.35, s * 0.85, s * 0.70], radius=int(s * 0.08), fill=(40, 60, 110, 255))
        for cx in (0.32, 0.68):
            d.ellipse([s * (cx - 0.1), s * 0.42, s * (cx + 0.1), s * 0.62], fill=(20, 25, 40, 255))
    elif sku_id.startswith("vase"):
        d.ellipse([s * 0.30, s * 0.40, s * 0.70, s * 0.90], fill=(90, 140, 200, 255))
        d.rectangle([s * 0.42, s * 0.10, s * 0.58, s * 0.50], fill=(90, 140, 200, 255))
        d.ellipse([s * 0.38, s * 0.55, s * 0.62, s * 0.75], fill=(240, 240, 250, 255))
    else:  # a gift box on white, saved as JPEG without alpha
        img = Image.new("RGB", (size, size), (255, 255, 255))
        d = ImageDraw.Draw(img)
        d.rectangle([s * 0.22, s * 0.40, s * 0.78, s * 0.85], fill=(190, 30, 60))
        d.rectangle([s * 0.18, s * 0.32, s * 0.82, s * 0.42], fill=(170, 25, 55))
        d.rectangle([s * 0.47, s * 0.32, s * 0.53, s * 0.85], fill=(240, 200, 60))
    return img


def write_samples(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for sku_id, (caption, category) in SAMPLES.items():
        img = _draw(sku_id)
        name = f"{sku_id}.png" if img.mode == "RGBA" else f"{sku_id}.jpg"
        img.save(out_dir / name, **({"quality": 100, "subsampling": 0} if name.endswith(".jpg") else {}))
        rows.append(
            {"sku_id": sku_id, "image_uri": f"{out_dir.name}/{name}", "caption": caption, "category": category}
        )
    with open(out_dir.parent / "samples.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    write_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES_DIR)
