"""Training scenes for the toy generator: the synthetic world's renders, laid out as the engine lays out
products, each with a prompt that describes it.

A *scene set* is a folder of Parquet shards (``scenes-00000.parquet``, ...) plus ``scenes.json`` (written
last: its presence marks a complete set). One row per scene:

| column    | what |
|-----------|------|
| ``id``      | ``s<index>`` |
| ``image``   | PNG bytes, (S, S, 3): the whole rendered scene, product included |
| ``product`` | PNG bytes, (S, S, 4): the laid-out product cutout (alpha = product), as the engine would lay it out |
| ``prompt``  | the scene's prompt (below) |
| ``label``   | the label the renderer drew (``rfnet.config.LABELS``): every label appears, at the world's rates |
| ``caption`` | the product caption (``rfnet.synth``: names the product and its real size class) |

Prompts. The engine prompts with the authors' templates ("product on a wooden table in a cozy living
room, ..."), which say nothing this world can show; so each training prompt starts with what the scene
shows (wall and floor colours, the scene's scale, the product caption) and ends with a template drawn at
random, its ``{}`` colour slot naming the wall's colour when that colour is one of the authors'. The
generator so learns the authors' templates as near-neutral text, the way a real base model treats the
stock phrases of a prompt, while the descriptive part stays steerable.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from engine.prompts import COLOURS as TEMPLATE_COLOURS
from engine.prompts import PromptTemplate, load_prompt_config
from rfnet.config import LABELS
from rfnet.synth import COLOURS, draw_labels, make_product, place, render

logger = logging.getLogger(__name__)

META_FILE = "scenes.json"
SHARD_ROWS = 500
COLUMNS = ("id", "image", "product", "prompt", "label", "caption")

# Colour words a prompt may use: the authors' background colours (the templates' {} slot), then the
# product colours of the synthetic world. A scene's colour is named by the nearest entry.
PALETTE: dict[str, tuple[int, int, int]] = {
    "light pea green": (190, 220, 150),
    "light yellow": (250, 240, 160),
    "light pink": (250, 195, 210),
    "light sky blue": (160, 205, 240),
    "cream": (245, 235, 205),
    "silver": (195, 195, 200),
    "beige": (215, 195, 160),
    **COLOURS,
}
SCALE_WORDS = {"small": "close-up", "medium": "medium shot", "large": "wide room view"}


class SceneSetError(ValueError):
    """A scene set that is missing, empty or unreadable; the message names the set and what is wrong."""


def colour_name(rgb: np.ndarray) -> str:
    """The palette's name nearest to ``rgb`` ((3,) in [0, 255])."""
    names = list(PALETTE)
    dist = [float(np.sum((np.asarray(PALETTE[n], np.float32) - rgb) ** 2)) for n in names]
    return names[int(np.argmin(dist))]


def scene_prompt(scene: dict, caption: str, template: PromptTemplate) -> str:
    """What the scene shows, then the template (its colour slot filled with the wall colour's name)."""
    wall, floor = colour_name(scene["wall"]), colour_name(scene["floor"])
    text = template.prompt
    if template.flag == 1:
        text = text.replace("{}", wall if wall in TEMPLATE_COLOURS else "plain", 1)
    return f"{wall} wall, {floor} floor, {SCALE_WORDS[scene['scale']]}, {caption}, {text}"


def make_scene(index: int, seed: int, size: int, templates: list[PromptTemplate]) -> dict:
    """Scene ``index`` of the set with ``seed``: a pure function of both.

    Returns:
        A row: ``image`` (S, S, 3) uint8, ``product`` (S, S, 4) uint8, ``prompt``, ``label``, ``caption``.
    """
    rng = np.random.default_rng([seed, index, 7])
    template = templates[int(rng.integers(len(templates)))]
    # One product per scene (rendered at 2x and downsampled, like rfnet.synth's datasets).
    product = place(make_product(index, seed, 2 * size), template.image_scale)
    label = draw_labels(1, product.unsuitable, rng, available_rate=0.55, size_class=product.size_class)[0]
    maps = render(product, label, rng)
    image = _u8(_down(maps["generated"], size))
    cutout = _u8(_down(product.rgba, size))
    return {
        "id": f"s{index:06d}",
        "image": image,
        "product": cutout,
        "prompt": scene_prompt(maps["scene"], product.caption, template),
        "label": label,
        "caption": product.caption,
    }


def _down(x: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_scenes(out: str, n: int, seed: int = 0, size: int = 128, prompts: str | None = None) -> dict[str, int]:
    """Write a scene set of ``n`` scenes to ``out``; returns the count of scenes per label."""
    if n < 1:
        raise ValueError(f"a scene set needs n >= 1, got {n}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8, got {size}")
    templates = load_prompt_config(prompts)
    os.makedirs(out, exist_ok=True)
    counts = dict.fromkeys(LABELS, 0)
    for shard, start in enumerate(range(0, n, SHARD_ROWS)):
        rows = [make_scene(i, seed, size, templates) for i in range(start, min(n, start + SHARD_ROWS))]
        for r in rows:
            counts[r["label"]] += 1
        table = pa.table(
            {
                "id": [r["id"] for r in rows],
                "image": [_png(r["image"]) for r in rows],
                "product": [_png(r["product"]) for r in rows],
                "prompt": [r["prompt"] for r in rows],
                "label": [r["label"] for r in rows],
                "caption": [r["caption"] for r in rows],
            }
        )
        tmp = os.path.join(out, f".scenes-{shard:05d}.parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, os.path.join(out, f"scenes-{shard:05d}.parquet"))
        logger.info("wrote scenes %d-%d of %d", start, start + len(rows) - 1, n)
    meta = {"n": n, "seed": seed, "size": size, "labels": counts}
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return counts


def check_scene_set(path: str) -> dict:
    """Validate a scene set without decoding it; returns its ``scenes.json``.

    Raises:
        SceneSetError: the folder is missing, incomplete, empty, or a shard is unreadable or lacks columns.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SceneSetError(f"scene set {path}: not a folder (write one with `adloop synth scenes`)")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise SceneSetError(f"scene set {path}: no {META_FILE} (not a scene set, or its writing did not finish)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SceneSetError(f"scene set {path}: {META_FILE} is not valid JSON ({err})") from None
    shards = sorted(folder.glob("scenes-*.parquet"))
    rows = 0
    for shard in shards:
        try:
            schema = pq.read_schema(shard)
            rows += pq.ParquetFile(shard).metadata.num_rows
        except (OSError, pa.ArrowException) as err:
            raise SceneSetError(f"scene set {path}: {shard.name} is unreadable ({err})") from None
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise SceneSetError(f"scene set {path}: {shard.name} lacks columns {missing}")
    if rows == 0:
        raise SceneSetError(f"scene set {path}: empty (no scenes in {len(shards)} shard files)")
    if not isinstance(meta.get("size"), int):
        raise SceneSetError(f"scene set {path}: {META_FILE} has no integer 'size'")
    return {**meta, "rows": rows, "shards": [str(s) for s in shards]}


def decode_png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))
