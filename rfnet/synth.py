"""A generator of RF1M-format datasets with programmatic defects (what tests, demos and benchmarks train on).

RF1M itself cannot be downloaded here, so this module draws products (procedural blobs, some with a stand,
in a colour and a texture) with captions that name the product and its real size class, lays each
product out once (the product cutout, I_o, is the same in all of its images) and composes it onto
procedural scenes (a wall, a tiled floor, decor). Each label is produced on purpose:

- **Available**: the product rests on the floor, the background avoids the product's colours, and the
  tile period matches the caption's size class (large tiles = close-up of a small item, fine tiles = a
  room-scale item).
- **Unsuitable**: the *cutout itself* is truncated (a straight cut) or damaged (holes, a bite). A
  property of the product, so all of its images carry it.
- **Space Mismatch**: the product floats above its shadow, hangs against the wall (horizon below its
  base), or, in a third of the cases, looks grounded but the depth map puts it far in front of the
  floor it seems to touch (visible only in depth: available scenes draw no contact shadow a third of
  the time, so a missing shadow alone proves nothing).
- **Size Mismatch**: the scene's scale (tile period, window size) belongs to the opposite end of the
  scale from the caption's size class (a sofa in a close-up, a mug in a room). Close-up and room-scale
  scenes are also what available small and large products get, so at either extreme only the caption
  tells a mismatch from a match (a medium-scale scene is never mismatched, a cue the image alone gives).
- **Indistinctiveness**: wall, floor and decor take the product's own colour and texture.
- **Shape Hallucination**: the background grows a stand, a pedestal or an extra lobe in the product's
  colour and texture, attached to its silhouette. Since 40% of products really have a stand, this is
  only decidable by comparing with the product cutout.

Depth and saliency maps are rendered from the scene as an ideal DPT / U^2-Net would see it (depth: far
wall, floor nearing the camera, the product at the depth of its contact point; saliency: the object
silhouette, hallucinated parts included, dimmed by low contrast), with blur and noise. A dataset can
also be used with maps recomputed by the project's depth/saliency models (``rfnet.data``).

Layout on disk (RF1M: image folders + ``label.txt``)::

    generated/p00012_03.png   RGB ad image        product/p00012_03.png   RGBA cutout (same name)
    depth/p00012_03.png       8-bit depth map     saliency/p00012_03.png  8-bit saliency map
    label.txt                 "p00012_03.png<TAB>Space Mismatch" per line
    caption.txt               "p00012_03.png<TAB>a striped red mug, real size: small" per line

File names are ``p<product id>_<k>``: the product id is what the train/val/test split groups by.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np

from rfnet.config import LABELS

logger = logging.getLogger(__name__)

SIZE_CLASSES = ("small", "medium", "large")
NOUNS = {
    "small": ("mug", "cup", "bottle", "watch", "perfume", "lipstick", "phone", "candle", "jar"),
    "medium": ("lamp", "speaker", "kettle", "fan", "backpack", "vase", "toaster", "basket", "monitor"),
    "large": ("sofa", "armchair", "wardrobe", "fridge", "cabinet", "bookcase", "treadmill", "dresser", "bed"),
}
COLOURS = {
    "red": (200, 40, 40),
    "orange": (230, 130, 30),
    "yellow": (225, 200, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 200),
    "purple": (130, 60, 170),
    "pink": (230, 120, 170),
    "brown": (120, 75, 40),
    "black": (35, 35, 35),
    "white": (235, 235, 235),
    "grey": (128, 128, 128),
    "teal": (30, 140, 140),
}
TEXTURES = ("plain", "striped", "dotted")
# The scene's scale, per scene size class: a small item is shot close up (big floor tiles, a window larger
# than the wall), a large one at room scale (fine tiles, a small window). Both are fractions of the canvas;
# classes are ~3x apart and jittered by +-15%.
TILE_PERIOD = {"small": 0.45, "medium": 0.16, "large": 0.055}
WINDOW_HEIGHT = {"small": 0.75, "medium": 0.26, "large": 0.09}
MISMATCH_SCENE = {"small": ("large",), "medium": ("small", "large"), "large": ("small",)}
# Size mismatch is likelier for large products (room-scale items are the ones generators shrink); other
# defects are equally likely for every size class.
SIZE_MISMATCH_BY_CLASS = {"small": 0.5, "medium": 1.0, "large": 2.0}
# Relative frequencies of the defects among unavailable images of good cutouts. The two that need another
# modality to be seen (caption, product image) get more examples.
DEFECT_WEIGHTS = {"Space Mismatch": 1.0, "Size Mismatch": 1.5, "Indistinctiveness": 0.8, "Shape Hallucination": 1.5}


@dataclass
class Product:
    """One product: its look, caption and the laid-out cutout (same in all of its images)."""

    pid: int
    caption: str
    size_class: str
    colour: np.ndarray  # (3,) float in [0, 255]
    texture: np.ndarray  # (R, R, 3) float in [0, 1]: the product's surface, continued over the whole canvas
    rgba: np.ndarray  # (R, R, 4) float in [0, 1], at render resolution
    unsuitable: bool
    has_stand: bool
    bottom: int  # lowest product row (render px)
    height: int  # product pixel height (render px)
    x_range: tuple[int, int]  # columns of the product's base row


def _grid(r: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    return (yy + 0.5) / r, (xx + 0.5) / r


def _blob(yy, xx, cy, cx, ry, rx, rng) -> np.ndarray:
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(theta)
    for k in (2, 3, 4):
        radius += rng.uniform(0, 0.18 / (k - 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return dy**2 + dx**2 <= radius**2


def _texture(yy, xx, kind: str, colour: np.ndarray, rng) -> np.ndarray:
    """(R, R, 3) float in [0, 255]: the colour with a shading gradient and a stripe/dot pattern."""
    shade = 0.85 + 0.3 * (1 - yy)[..., None]
    img = np.clip(colour[None, None] * shade, 0, 255)
    alt = np.clip(colour * 0.55 + (255 - colour) * 0.25, 0, 255)
    period = rng.uniform(0.06, 0.1)
    if kind == "striped":
        mask = ((xx + yy) / period % 1.0) < 0.45
    elif kind == "dotted":
        mask = (((xx / period) % 1 - 0.5) ** 2 + ((yy / period) % 1 - 0.5) ** 2) < 0.06
    else:
        return img
    img[mask] = alt
    return img


def make_product(pid: int, seed: int, res: int) -> Product:
    """Draw product ``pid`` of the dataset with ``seed`` (deterministic), rendered at ``res`` px."""
    rng = np.random.default_rng([seed, pid, 0])
    size_class = SIZE_CLASSES[rng.integers(3)]
    noun = NOUNS[size_class][rng.integers(len(NOUNS[size_class]))]
    colour_name = list(COLOURS)[rng.integers(len(COLOURS))]
    texture = TEXTURES[rng.integers(3)]
    colour = np.array(COLOURS[colour_name], np.float32) * rng.uniform(0.9, 1.1)
    texture_word = "" if texture == "plain" else texture + " "
    caption = f"a {texture_word}{colour_name} {noun}, real size: {size_class}"

    yy, xx = _grid(res)
    h = rng.uniform(0.34, 0.48)  # product height, fraction of the canvas
    aspect = rng.uniform(0.6, 1.5)
    bottom, cx = rng.uniform(0.74, 0.84), rng.uniform(0.42, 0.58)
    has_stand = bool(rng.random() < 0.4)
    stand_h = h * rng.uniform(0.2, 0.35) if has_stand else 0.0
    body_h = h - stand_h
    ry, rx = body_h / 2, min(body_h / 2 * aspect, 0.3)
    cy = bottom - stand_h - ry
    mask = _blob(yy, xx, cy, cx, ry * 0.92, rx * 0.92, rng)
    if has_stand:
        w = rx * rng.uniform(0.25, 0.7)
        mask |= (np.abs(xx - cx) <= w) & (yy >= cy) & (yy <= bottom)
        if rng.random() < 0.5:  # a foot plate
            mask |= (np.abs(xx - cx) <= w * 1.8) & (yy >= bottom - 0.025) & (yy <= bottom)

    unsuitable = bool(rng.random() < 0.1)
    if unsuitable:
        if rng.random() < 0.5:  # truncated: a straight cut removes a side of the product
            ang = rng.uniform(0, 2 * np.pi)
            nx, ny = np.cos(ang), np.sin(ang)
            d = (xx - cx) * nx + (yy - cy) * ny
            mask &= d < rng.uniform(-0.2, 0.3) * max(rx, ry)
        else:  # damaged: holes and a bite out of the edge
            for _ in range(rng.integers(2, 5)):
                hy, hx = cy + rng.uniform(-0.6, 0.6) * ry, cx + rng.uniform(-0.6, 0.6) * rx
                mask &= (yy - hy) ** 2 + (xx - hx) ** 2 > rng.uniform(0.045, 0.07) ** 2
            ang = rng.uniform(0, 2 * np.pi)
            by, bx = cy + np.sin(ang) * ry, cx + np.cos(ang) * rx
            mask &= (yy - by) ** 2 + (xx - bx) ** 2 > rng.uniform(0.1, 0.15) ** 2

    surface = _texture(yy, xx, texture, colour, rng) / 255.0
    rgba = np.concatenate([surface * mask[..., None], mask[..., None]], axis=-1).astype(np.float32)
    rows = np.nonzero(mask.any(axis=1))[0]
    base = np.nonzero(mask[rows[-1]])[0]
    return Product(
        pid, caption, size_class, colour, surface, rgba, unsuitable, has_stand,
        int(rows[-1]), int(rows[-1] - rows[0] + 1), (int(base[0]), int(base[-1])),
    )  # fmt: skip


def place(product: Product, image_scale: float) -> Product:
    """``product`` laid out the way the engine lays out a cutout: the bounding box of its mask scaled so
    the longer side is ``image_scale`` of the canvas, centred. The surface texture moves with it.

    The generator's training scenes use this, so it learns scenes around products placed as they will be
    at generation time (``rfnet`` cannot import the engine's layout; this is the same geometry in floats).
    """
    res = product.rgba.shape[0]
    alpha = product.rgba[..., 3]
    ys, xs = np.nonzero(alpha > 0.5)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = image_scale * res / max(y1 - y0, x1 - x0)
    # Maps the bounding box's centre to the canvas centre.
    matrix = np.float32([[scale, 0, res / 2 - scale * (x0 + x1) / 2], [0, scale, res / 2 - scale * (y0 + y1) / 2]])
    rgba = cv2.warpAffine(product.rgba, matrix, (res, res), flags=cv2.INTER_LINEAR, borderValue=0)
    texture = cv2.warpAffine(
        product.texture, matrix, (res, res), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    mask = rgba[..., 3] > 0.5
    rows = np.nonzero(mask.any(axis=1))[0]
    base = np.nonzero(mask[rows[-1]])[0]
    return dataclasses.replace(
        product, rgba=rgba.astype(np.float32), texture=texture.astype(np.float32), bottom=int(rows[-1]),
        height=int(rows[-1] - rows[0] + 1), x_range=(int(base[0]), int(base[-1])),
    )  # fmt: skip


def _far_colour(colour: np.ndarray, rng, min_dist: float = 150.0) -> np.ndarray:
    for _ in range(100):
        c = rng.uniform(20, 240, 3).astype(np.float32)
        if np.linalg.norm(c - colour) >= min_dist:
            return c
    return 255 - colour


def _near_colour(colour: np.ndarray, rng) -> np.ndarray:
    return np.clip(colour + rng.normal(0, 14, 3), 0, 255).astype(np.float32)


def render(product: Product, label: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Compose ``product`` into a scene carrying ``label``; returns float images at render resolution.

    Returns:
        ``generated`` (R, R, 3) and ``depth``, ``saliency`` (R, R), all float in [0, 1]; and ``scene``, what
        a caption of the scene would say: ``wall`` and ``floor`` colours ((3,) float in [0, 255]) and
        ``scale``, the size class the scene's tiles and window belong to.
    """
    res = product.rgba.shape[0]
    yy, xx = _grid(res)
    alpha = product.rgba[..., 3]
    bottom = product.bottom / res
    indistinct = label == "Indistinctiveness"

    # Scene geometry: where the floor starts and where the product's support (contact shadow) is.
    contact = bottom
    horizon = bottom - rng.uniform(0.12, 0.4)
    shadow = rng.random() < 0.67
    depth_offset = 0.0
    variant = rng.random()
    if label == "Space Mismatch":
        if variant < 0.4:  # floats above its shadow
            contact, shadow = bottom + rng.uniform(0.07, 0.14), True
            horizon = min(horizon, bottom - 0.05)
        elif variant < 0.7:  # hangs against the wall: the floor starts below its base
            horizon, shadow = bottom + rng.uniform(0.05, 0.12), False
        else:  # looks grounded, but depth puts it far in front of the floor it seems to touch
            shadow, depth_offset = False, rng.uniform(0.3, 0.45)

    # Extension the background grows onto the silhouette (shape hallucination).
    extension = np.zeros_like(alpha, dtype=bool)
    if label == "Shape Hallucination":
        x0, x1 = product.x_range[0] / res, product.x_range[1] / res
        cx, w = (x0 + x1) / 2, max(x1 - x0, 0.06)
        kind = rng.integers(3) if not product.has_stand else 1 + rng.integers(2)
        if kind == 0:  # a stand/legs under the product
            ext_h = rng.uniform(0.08, 0.14)
            extension = (
                (np.abs(xx - cx) <= w * rng.uniform(0.15, 0.35)) & (yy >= bottom - 0.02) & (yy <= bottom + ext_h)
            )
            contact = bottom + ext_h
        elif kind == 1:  # a pedestal
            ext_h = rng.uniform(0.05, 0.1)
            extension = (np.abs(xx - cx) <= w * rng.uniform(0.6, 0.9)) & (yy >= bottom - 0.01) & (yy <= bottom + ext_h)
            contact = bottom + ext_h
        else:  # an extra lobe on the side or top of the silhouette
            ys, xs = np.nonzero(alpha > 0.5)
            i = rng.integers(len(ys))
            # pick a boundary-ish point: the farthest product pixel in a random direction
            ang = rng.uniform(0, 2 * np.pi)
            proj = xs * np.cos(ang) + ys * np.sin(ang)
            i = int(np.argmax(proj))
            py, px = ys[i] / res, xs[i] / res
            r = rng.uniform(0.06, 0.1)
            extension = (yy - py) ** 2 + (xx - px) ** 2 <= r**2
        horizon = min(horizon, contact - 0.08)
        extension &= alpha < 0.5

    # Background: wall above the horizon, tiled floor below, decor on the wall.
    if indistinct:
        wall_c, floor_c = _near_colour(product.colour, rng), _near_colour(product.colour, rng)
    else:
        wall_c, floor_c = _far_colour(product.colour, rng), _far_colour(product.colour, rng, 120.0)
    floor = yy >= horizon
    img = np.where(floor[..., None], floor_c, wall_c) * (0.9 + 0.1 * rng.random())
    scene_class = product.size_class
    if label == "Size Mismatch":
        # The scene belongs to the opposite end of the scale (a sofa in a close-up, a mug in a room); a medium
        # product goes either way. So a medium-scale scene is never mismatched, which a model can see without
        # the caption, while at either extreme only the caption tells which is wrong.
        scene_class = MISMATCH_SCENE[product.size_class][rng.integers(len(MISMATCH_SCENE[product.size_class]))]
    period = TILE_PERIOD[scene_class] * rng.uniform(0.87, 1.15)
    phase_x, phase_y = rng.uniform(0, period, 2)
    line = max(0.006, 0.08 * period)
    tiles = (((xx + phase_x) % period) < line) | (floor & (((yy + phase_y) % period) < line))
    tile_shade = 0.7 if rng.random() < 0.5 else 1.25
    img = np.where(tiles[..., None], np.clip(img * tile_shade, 0, 255), img)
    # A window on the wall, its size set by the scene scale (a second, independent scale cue).
    wh = WINDOW_HEIGHT[scene_class] * rng.uniform(0.87, 1.15)
    wy, wx = horizon - 0.03 - wh * rng.uniform(0.5, 1.0), rng.uniform(0.05, 0.95)
    window = (np.abs(yy - wy) <= wh / 2) & (np.abs(xx - wx) <= wh * 0.35) & ~floor
    frame = window & ~(
        (np.abs(yy - wy) <= wh / 2 - max(0.012, wh * 0.1)) & (np.abs(xx - wx) <= wh * 0.35 - max(0.012, wh * 0.1))
    )
    img[window] = (200, 225, 245)
    img[frame] = np.clip(wall_c * 0.5, 0, 255)
    decor_sal = np.zeros_like(alpha)
    for _ in range(rng.integers(1, 4) + (3 if indistinct else 0)):
        dy, dx = rng.uniform(0.05, max(horizon - 0.05, 0.08)), rng.uniform(0.05, 0.95)
        r = rng.uniform(0.03, 0.08)
        blob = ((yy - dy) / r) ** 2 + ((xx - dx) / (r * rng.uniform(0.6, 1.6))) ** 2 <= 1
        blob &= alpha < 0.01
        dc = _near_colour(product.colour, rng) if indistinct else _far_colour(product.colour, rng, 100.0)
        img[blob] = dc
        decor_sal[blob] = 0.3
    if shadow:
        x0, x1 = product.x_range
        sw = max((x1 - x0) / res * 0.75, 0.05)
        ell = ((yy - contact) / 0.025) ** 2 + ((xx - (x0 + x1) / 2 / res) / sw) ** 2 <= 1
        img = np.where(ell[..., None], img * 0.45, img)
    if extension.any():  # the background continues the product's own surface
        img[extension] = product.texture[extension] * 255 * rng.uniform(0.9, 1.0)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255) / 255.0
    generated = img * (1 - alpha[..., None]) + product.rgba[..., :3] * alpha[..., None]

    # Depth an ideal estimator would give: wall far (dark), floor nearer towards the bottom (brighter),
    # the product at the depth of the floor where it stands (plus the offset of a floating product).
    floor_depth = lambda y: 0.3 + 0.7 * np.clip((y - horizon) / max(1 - horizon, 1e-3), 0, 1)  # noqa: E731
    depth = np.where(floor, floor_depth(yy), 0.12)
    obj = (alpha > 0.5) | extension
    product_depth = (floor_depth(contact) if contact >= horizon else 0.5) + depth_offset
    depth = np.where(obj, min(product_depth, 1.0), depth)
    depth = cv2.GaussianBlur(depth.astype(np.float32), (0, 0), res / 96) + rng.normal(0, 0.02, depth.shape)

    # Saliency an ideal salient-object model would give: the whole object, dimmed by low contrast.
    contrast = np.linalg.norm(wall_c - product.colour) / 255.0
    strength = float(np.clip(contrast * 1.6, 0.15, 1.0))
    saliency = np.maximum(obj * strength, decor_sal * (1.0 if indistinct else 0.5))
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), res / 128) + rng.normal(0, 0.02, depth.shape)
    return {
        "generated": np.clip(generated, 0, 1).astype(np.float32),
        "depth": np.clip(depth, 0, 1).astype(np.float32),
        "saliency": np.clip(saliency, 0, 1).astype(np.float32),
        "scene": {"wall": wall_c, "floor": floor_c, "scale": scene_class},
    }


def draw_labels(
    n_images: int, unsuitable: bool, rng: np.random.Generator, available_rate: float, size_class: str = "medium"
) -> list[str]:
    """Labels for one product's images: all Unsuitable for a bad cutout, else Available or a defect."""
    if unsuitable:
        return ["Unsuitable"] * n_images
    defects = list(DEFECT_WEIGHTS)
    w = np.array([DEFECT_WEIGHTS[d] * (SIZE_MISMATCH_BY_CLASS[size_class] if d == "Size Mismatch" else 1.0)
                  for d in defects])  # fmt: skip
    labels = []
    for _ in range(n_images):
        if rng.random() < available_rate:
            labels.append("Available")
        else:
            labels.append(defects[rng.choice(len(defects), p=w / w.sum())])
    return labels


def _down(x: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


@dataclass
class Sample:
    """One labelled image of the synthetic world, at its written size (uint8 images)."""

    name: str
    label: str
    caption: str
    product: np.ndarray  # (S, S, 4) RGBA cutout
    generated: np.ndarray  # (S, S, 3) RGB
    depth: np.ndarray  # (S, S)
    saliency: np.ndarray  # (S, S)


def iter_samples(n: int, seed: int = 0, size: int = 64, images_per_product: int = 4, available_rate: float = 0.55):
    """The ``n`` labelled samples of the dataset with ``seed`` (see ``generate_rf1m``), in file order."""
    if n < 1 or images_per_product < 1:
        raise ValueError("n and images_per_product must be >= 1")
    res = 2 * size
    for pid in range(-(-n // images_per_product)):
        product = make_product(pid, seed, res)
        rng = np.random.default_rng([seed, pid, 1])
        k_here = min(images_per_product, n - pid * images_per_product)
        cutout = _to_u8(_down(product.rgba, size))
        for k, label in enumerate(draw_labels(k_here, product.unsuitable, rng, available_rate, product.size_class)):
            maps = render(product, label, np.random.default_rng([seed, pid, 2, k]))
            yield Sample(
                f"p{pid:05d}_{k:02d}.png", label, product.caption, cutout, _to_u8(_down(maps["generated"], size)),
                _to_u8(_down(maps["depth"], size)), _to_u8(_down(maps["saliency"], size)),
            )  # fmt: skip


def generate_rf1m(
    out: str, n: int, seed: int = 0, size: int = 64, images_per_product: int = 4, available_rate: float = 0.55
) -> dict[str, int]:
    """Write an RF1M-format dataset of ``n`` images to ``out``.

    Args:
        out: destination folder (created).
        n: number of generated images.
        seed: everything is a pure function of (seed, product id, image index).
        size: side of the written images in px (rendered at 2x and downsampled).
        images_per_product: images of each product (with different scenes and labels).
        available_rate: share of Available among images of products with a good cutout.

    Returns:
        Count of images per label.
    """
    for sub in ("generated", "product", "depth", "saliency"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    counts = dict.fromkeys(LABELS, 0)
    label_lines, caption_lines = [], []
    for sample in iter_samples(n, seed, size, images_per_product, available_rate):
        name = sample.name
        cv2.imwrite(os.path.join(out, "generated", name), cv2.cvtColor(sample.generated, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(out, "product", name), cv2.cvtColor(sample.product, cv2.COLOR_RGBA2BGRA))
        cv2.imwrite(os.path.join(out, "depth", name), sample.depth)
        cv2.imwrite(os.path.join(out, "saliency", name), sample.saliency)
        label_lines.append(f"{name}\t{sample.label}\n")
        caption_lines.append(f"{name}\t{sample.caption}\n")
        counts[sample.label] += 1
    with open(os.path.join(out, "caption.txt"), "w") as f:
        f.writelines(caption_lines)
    # label.txt last: its presence marks a complete dataset.
    with open(os.path.join(out, "label.txt"), "w") as f:
        f.writelines(label_lines)
    logger.info("wrote %d images of %d products to %s: %s", n, -(-n // images_per_product), out, counts)
    return counts
