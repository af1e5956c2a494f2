"""The inspector: an independent judge of the synthetic world, the stand-in for the paper's human inspectors.

In the paper every result is checked twice, by RFNet ("Ava") and by people ("Human Ava"), so that a reward
rising during RFFT cannot just be RFNet being fooled. Here nobody can look, so this module plays the
people. It is neither RFNet nor differentiable, and learns nothing: it measures the image with the
world's own definitions (``rfnet.synth``) and applies them in a fixed order.

1. **Unsuitable**: the cutout is truncated or damaged: holes, a deep notch in the outline, or sharp corners
   (a straight cut or a bite meets the smooth outline of the world's products at a corner), apart from a
   stand's joints. These rules know the world's product shapes, so they apply to products whose caption
   states the world's size class (``real size: ...``); a mug's handle or a box's corners are not damage.
2. **Indistinctiveness**: wall and floor both take the product's colours.
3. **Shape Hallucination**: product-coloured pixels outside the cutout, attached to its silhouette (the
   contact shadow's band under the base is left out: under a dark product a shadow looks like it).
4. **Space Mismatch**: no support under the product: the floor starts below its base (it hangs), its
   contact shadow lies clearly below the base (it floats), or, when a depth map is given, the product
   sits much nearer the camera than the floor at its base.
5. **Size Mismatch**: the scene's scale (floor tile period, window size) belongs to another size class
   than the caption's (``real size: small`` ... or a height such as ``25 cm tall``).
6. Otherwise **Available**.

Inputs are what a person gets: the generated image, the product cutout laid out on the same canvas, and
the caption. A depth map is optional. A render has a hidden 3D scene, and its own depth map is what a
person sees of it (one Space Mismatch variant shows only in depth). A generated image has no hidden
scene, so it is judged from its pixels alone.

The thresholds are fractions of the canvas and colour distances in 0-255 units, set once on renders of
a calibration seed (``bench/inspector_quality.py --seed 7``) and measured on other seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from rfnet.config import LABELS
from rfnet.synth import SIZE_CLASSES, TILE_PERIOD, WINDOW_HEIGHT

# The window glass of every synthetic scene (``rfnet.synth.render``).
WINDOW_RGB = np.array((200, 225, 245), np.float32)
# How the world's captions state the size class ("a striped red mug, real size: small").
WORLD_CAPTION = re.compile(r"real size:\s*(small|medium|large)", re.IGNORECASE)
# Caption heights (cm) that separate the size classes when the caption gives a measure, not a class.
SIZE_CM = ((30.0, "small"), (100.0, "medium"))


@dataclass(frozen=True)
class InspectorThresholds:
    """The decision thresholds (canvas fractions, 0-255 colour distances); see the module docstring."""

    hole_area: float = 0.012
    """Unsuitable: enclosed holes, as a fraction of the product's area."""
    notch_depth: float = 0.25
    """Unsuitable: deepest notch of the outline (convexity defect), as a fraction of the product's height."""
    corners: int = 0
    """Unsuitable: more sharp corners than this in the outline above the stand (a cut or a bite makes two)."""
    near_colour: float = 48.0
    """Indistinctiveness: wall and floor both this close to the product's palette."""
    ext_colour: float = 40.0
    """Shape Hallucination: a background pixel this close to a product colour continues the product."""
    ext_area: float = 0.0002
    """Shape Hallucination: attached product-coloured area, as a fraction of the canvas."""
    legs: float = 0.07
    """Shape Hallucination: a column under the base nearer the product's colour than the floor's, this long
    (canvas fraction): a stand too thin to keep the product's colour at this resolution."""
    hang: float = 0.025
    """Space Mismatch: the floor starts this far (canvas fraction) below the base."""
    float_gap: float = 0.04
    """Space Mismatch: the contact shadow's centre lies this far below the base."""
    depth_gap: float = 0.15
    """Space Mismatch: the product is this much nearer (depth units) than the floor at its base."""


@dataclass
class Verdict:
    """The inspector's judgement of one image: the label and the measurements it was based on."""

    label: str
    measures: dict[str, float | str | None] = field(default_factory=dict)


def caption_size_class(caption: str) -> str | None:
    """The size class a caption states: ``real size: small`` or a height such as ``25 cm tall``; else None."""
    m = WORLD_CAPTION.search(caption)
    if m:
        return m.group(1).lower()
    m = re.search(r"(\d+(?:\.\d+)?)\s*(cm|m)\b", caption)
    if m:
        cm = float(m.group(1)) * (100.0 if m.group(2) == "m" else 1.0)
        return next((name for bound, name in SIZE_CM if cm < bound), "large")
    return None


class Inspector:
    """Judges images of the synthetic world; ``score`` has the interface of ``rfnet.Scorer.score``.

    Its probabilities are one-hot (a person says one label), so ``p_available`` is 0 or 1 and the
    threshold is 0.5.
    """

    model_id = "inspector"
    threshold = 0.5

    def __init__(self, thresholds: InspectorThresholds | None = None):
        self.t = thresholds or InspectorThresholds()

    def score(self, product_rgba: np.ndarray, generated: np.ndarray, captions: list[str], depth=None):
        """(B, H, W, 4) uint8 cutouts, (B, H, W, 3) uint8 images, B captions [, (B, H, W) depth in [0, 1]]."""
        from rfnet.scorer import ScoreResult

        if product_rgba.ndim != 4 or product_rgba.shape[-1] != 4:
            raise ValueError(f"product_rgba must be (B, H, W, 4) uint8, got {product_rgba.shape}")
        if generated.ndim != 4 or generated.shape[-1] != 3:
            raise ValueError(f"generated must be (B, H, W, 3) uint8, got {generated.shape}")
        if not (len(product_rgba) == len(generated) == len(captions)):
            raise ValueError(
                f"batch sizes differ: {len(product_rgba)} products, {len(generated)} images, {len(captions)} captions"
            )
        labels = [
            self.judge(product_rgba[i], generated[i], captions[i], None if depth is None else depth[i]).label
            for i in range(len(captions))
        ]
        probs = np.zeros((len(labels), len(LABELS)), np.float32)
        probs[np.arange(len(labels)), [LABELS.index(x) for x in labels]] = 1.0
        defect = [
            x if x != "Available" else LABELS[1 + int(np.argmax(p[1:]))] for x, p in zip(labels, probs, strict=True)
        ]
        p_available = probs[:, 0].copy()
        return ScoreResult(p_available, probs, defect, p_available >= self.threshold)

    def judge(self, product_rgba: np.ndarray, generated: np.ndarray, caption: str, depth=None) -> Verdict:
        """One image: (H, W, 4) uint8 cutout on the canvas, (H, W, 3) uint8 image, its caption."""
        if product_rgba.shape[:2] != generated.shape[:2]:
            generated = cv2.resize(generated, product_rgba.shape[1::-1], interpolation=cv2.INTER_AREA)
        alpha = product_rgba[..., 3].astype(np.float32) / 255.0
        mask = alpha >= 0.5
        m: dict[str, float | str | None] = {}
        if mask.sum() < 16:
            return Verdict("Unsuitable", {"product_pixels": float(mask.sum())})
        image = generated.astype(np.float32)
        # The palette leaves out the outline, whose pixels are blended with the cutout's transparent black.
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        palette = _palette(product_rgba[..., :3].astype(np.float32)[inner if inner.sum() >= 16 else mask])

        # The cutout rules know the world's products (smooth bodies, some on a stand), which its captions
        # mark with their size class; a handle's hole or a box's corners elsewhere are no damage.
        if WORLD_CAPTION.search(caption):
            m.update(_cutout_measures(alpha))
            t = self.t
            if m["hole_area"] > t.hole_area or m["notch_depth"] > t.notch_depth or m["corners"] > t.corners:
                return Verdict("Unsuitable", m)

        s = mask.shape[0]
        rows = np.nonzero(mask.any(axis=1))[0]
        bottom = int(rows[-1])
        near_product = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        background = ~near_product
        glass = np.linalg.norm(image - WINDOW_RGB, axis=-1) < 20
        wall, floor = _wall_floor(image, background & ~glass, bottom)
        m["wall_distance"] = _palette_distance(wall, palette)
        m["floor_distance"] = _palette_distance(floor, palette)
        if max(m["wall_distance"], m["floor_distance"]) < self.t.near_colour:
            return Verdict("Indistinctiveness", m)

        # Growth continues the product's main colour (its stripes or dots alone could match anything).
        main = palette[np.linalg.norm(palette - np.median(palette, axis=0), axis=-1) < 35]
        main = main if len(main) else palette
        m["extension"] = _extension_area(image, mask, main, glass, bottom, self.t.ext_colour) / (s * s)
        m["legs"] = _leg_run(image, mask, main, floor, bottom) / s
        if m["extension"] > self.t.ext_area or m["legs"] > self.t.legs:
            return Verdict("Shape Hallucination", m)

        horizon = _horizon(image, background & ~glass, wall, floor)
        m["horizon"] = None if horizon is None else horizon / s
        m["bottom"] = bottom / s
        shadow = _shadow_row(image, mask, background, floor, bottom)
        m["shadow"] = None if shadow is None else shadow / s
        hangs = horizon is None or horizon > bottom + self.t.hang * s
        floats = shadow is not None and shadow > bottom + self.t.float_gap * s
        if depth is not None:
            m["depth_gap"] = _depth_gap(np.asarray(depth, np.float32), mask, bottom)
        if hangs or floats or m.get("depth_gap", 0.0) > self.t.depth_gap:
            return Verdict("Space Mismatch", m)

        stated = caption_size_class(caption)
        scene = _scene_scale(image, background & ~glass, glass, s)
        m["caption_size"] = stated
        m.update(scene)
        if stated is not None and scene["scene_size"] is not None and scene["scene_size"] != stated:
            return Verdict("Size Mismatch", m)
        return Verdict("Available", m)


# --- measurements -------------------------------------------------------------------------------------


def _palette(pixels: np.ndarray, n: int = 256) -> np.ndarray:
    """Up to ``n`` of the product's pixel colours (evenly spaced), its palette for colour matching."""
    step = max(1, len(pixels) // n)
    return pixels[::step][:n]


def _palette_distance(colour: np.ndarray | None, palette: np.ndarray) -> float:
    if colour is None:
        return float("inf")
    return float(np.linalg.norm(palette - colour, axis=-1).min())


def _cutout_measures(alpha: np.ndarray) -> dict[str, float]:
    """Holes, the deepest notch and the longest straight stretch of the cutout's outline.

    The outline is traced at 4x (alpha resized smoothly, then cut at 0.5) so that a straight cut of a
    small cutout is told from a gently curved side.
    """
    up = 4
    big = cv2.resize(alpha, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR) >= 0.5
    big_u8 = big.astype(np.uint8)
    area = float(big.sum())
    filled = big_u8.copy()
    h, w = filled.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    cv2.floodFill(filled, flood, (0, 0), 2) if not filled[0, 0] else None
    holes = float((filled == 0).sum())
    contours, _ = cv2.findContours(big_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    ys = contour[:, 0, 1]
    height = float(ys.max() - ys.min() + 1)
    radius = float(np.sqrt(area / np.pi))

    stand_top = _stand_top(big)
    margin = 0.12 * height
    notch = 0.0
    hull = cv2.convexHull(contour, returnPoints=False)
    if len(hull) > 3:
        defects = cv2.convexityDefects(contour, np.sort(hull, axis=0))
        if defects is not None:
            for _start, _end, far, depth in defects.reshape(-1, 4):
                # The notches beside a stand are the product's shape, not damage.
                if stand_top is not None and contour[far, 0, 1] > stand_top - margin:
                    continue
                notch = max(notch, depth / 256.0 / height)

    corners = _corners(contour[:, 0, :].astype(np.float64), radius, None if stand_top is None else stand_top - margin)
    return {"hole_area": holes / max(area, 1.0), "notch_depth": notch, "corners": corners}


def _corners(points: np.ndarray, radius: float, stand_top: float | None) -> int:
    """How many sharp corners the closed outline ``points`` (N, 2) has: points where it turns by more than
    60 degrees within an arc of 0.3 ``radius``. A smooth blob turns by ~35 degrees at most over such an arc;
    a straight cut or a bite meets the outline at a corner. Corners at or below ``stand_top`` (a stand's
    joints and foot plate) are the product's own shape and are not counted."""
    seg = np.linalg.norm(np.diff(points, axis=0, append=points[:1]), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])[:-1]
    step = 1.0
    uniform = np.arange(0, arc[-1] + seg[-1], step)
    xs = np.interp(uniform, arc, points[:, 0], period=arc[-1] + seg[-1])
    ys = np.interp(uniform, arc, points[:, 1], period=arc[-1] + seg[-1])
    p = np.stack([xs, ys], 1)
    k = max(2, int(0.15 * radius / step))
    v1, v2 = p - np.roll(p, k, axis=0), np.roll(p, -k, axis=0) - p
    cos = (v1 * v2).sum(1) / np.maximum(np.linalg.norm(v1, axis=1) * np.linalg.norm(v2, axis=1), 1e-9)
    sharp = np.degrees(np.arccos(np.clip(cos, -1, 1))) > 60
    if stand_top is not None:
        sharp &= ys < stand_top
    # count runs of sharp points (one corner spans several neighbouring points)
    return int((sharp & ~np.roll(sharp, 1)).sum())


def _stand_top(mask: np.ndarray) -> float | None:
    """The top row of the product's stand: the run of rows above the base (a foot plate skipped) whose
    width stays within 25% of the lowest one's and under 0.8 of the widest row, over at least 6% of
    the height; None without one."""
    rows = np.nonzero(mask.any(axis=1))[0]
    widths = mask[rows].sum(axis=1).astype(np.float64)
    height = len(rows)
    tops = []
    for skip in (0, max(1, int(0.1 * height))):  # without, then with a foot plate
        ref = widths[height - 1 - skip]
        if ref >= 0.8 * widths.max():
            continue
        run = 0
        for i in range(height - 1 - skip, -1, -1):
            if abs(widths[i] - ref) > 0.25 * ref:
                break
            run += 1
        if run >= 0.06 * height:
            tops.append(float(rows[height - skip - run]))
    return min(tops) if tops else None  # the longer run: a foot plate alone is not the stand


def _wall_floor(image: np.ndarray, usable: np.ndarray, bottom: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Median colours of the wall (the top fifth of the canvas) and of the floor (the rows under the base)."""
    s = image.shape[0]
    top = usable.copy()
    top[s // 5 :] = False
    low = usable.copy()
    low[: min(s - 1, bottom + max(2, s // 32))] = False
    wall = np.median(image[top], axis=0) if top.sum() > 8 else None
    floor = np.median(image[low], axis=0) if low.sum() > 8 else None
    return wall, floor


def _horizon(image, usable, wall, floor) -> int | None:
    """The row where the floor starts: the split that best separates wall-coloured rows from floor-coloured
    ones; None when wall and floor cannot be told apart."""
    if wall is None or floor is None or np.linalg.norm(wall - floor) < 18:
        return None
    s = image.shape[0]
    vote = np.zeros(s)
    counted = np.zeros(s, bool)
    for y in range(s):
        px = image[y][usable[y]]
        if len(px) < 3:
            continue
        c = np.median(px, axis=0)
        vote[y] = 1.0 if np.linalg.norm(c - floor) < np.linalg.norm(c - wall) else -1.0
        counted[y] = True
    if not counted.any():
        return None
    # score of split h: wall rows above (-1 votes) + floor rows below (+1 votes)
    above = np.concatenate([[0], np.cumsum(-vote)])
    below = np.concatenate([np.cumsum(vote[::-1])[::-1], [0]])
    return int(np.argmax(above + below))


def _shadow_row(image, mask, background, floor, bottom) -> float | None:
    """Centre row of the contact shadow under the product (pixels at under ~0.6 of the floor's brightness,
    in the columns under its base, from just above the base to a fifth of the canvas below), or None."""
    if floor is None:
        return None
    s = image.shape[0]
    # The shadow is centred under the base, at least as wide as 10% of the canvas.
    cols = np.nonzero(mask[bottom])[0]
    centre, half = (cols[0] + cols[-1]) / 2, max((cols[-1] - cols[0]) / 2 * 0.75, 0.05 * s)
    x0, x1 = max(0, int(centre - half)), min(s, int(centre + half) + 1)
    y0, y1 = max(0, bottom - max(1, s // 40)), min(s, bottom + s // 5)
    lum = image[y0:y1, x0:x1].mean(-1)
    floor_lum = max(float(floor.mean()), 1.0)
    dark = (lum < 0.62 * floor_lum) & background[y0:y1, x0:x1]
    per_row = dark.mean(axis=1)
    rows = np.nonzero(per_row > 0.25)[0]
    if len(rows) == 0:
        return None
    weights = per_row[rows]
    return float(y0 + (rows * weights).sum() / weights.sum())


def _extension_area(image, mask, palette, glass, bottom, max_dist) -> float:
    """Product-coloured background pixels connected to the silhouette (outside the shadow band)."""
    s = mask.shape[0]
    reach = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (s // 4 | 1,) * 2))
    candidates = (reach > 0) & ~mask & ~glass
    ys, xs = np.nonzero(candidates)
    if len(ys) == 0:
        return 0.0
    px = image[ys, xs]
    d = np.full(len(px), np.inf, np.float32)
    for chunk in range(0, len(palette), 64):
        d = np.minimum(d, np.linalg.norm(px[:, None] - palette[None, chunk : chunk + 64], axis=-1).min(axis=1))
    like = np.zeros_like(mask)
    like[ys[d < max_dist], xs[d < max_dist]] = True
    # connected to the silhouette: grow from the product through product-coloured pixels
    seed = (mask | like).astype(np.uint8)
    n, comp = cv2.connectedComponents(seed, connectivity=8)
    attached = np.isin(comp, np.unique(comp[mask]))
    ext = attached & like
    # A fringe a few pixels wide along the outline (a blend of product and background, as a generator's
    # decoder leaves it) changes no shape: an opening keeps only growth at least ~3% of the canvas thick.
    radius = max(1, round(0.015 * s))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    ext = cv2.morphologyEx(ext.astype(np.uint8), cv2.MORPH_OPEN, disk).astype(bool)
    band = np.zeros_like(mask)
    band[max(0, bottom - s // 30) : bottom + s // 30 + 1] = True
    return float((ext & ~band).sum())


def _leg_run(image, mask, main, floor, bottom) -> float:
    """The longest run of rows (px) straight under the base, in one of its columns, whose pixels are nearer
    the product's main colour than the floor's (a blended thin stand or leg)."""
    if floor is None:
        return 0.0
    s = mask.shape[0]
    cols = np.nonzero(mask[bottom])[0]
    x0, x1 = max(0, cols[0] - 1), min(s, cols[-1] + 2)
    below = image[bottom + 1 : min(s, bottom + 1 + s // 6), x0:x1]
    if below.size == 0:
        return 0.0
    colour = np.median(main, axis=0)
    nearer = np.linalg.norm(below - colour, axis=-1) < np.linalg.norm(below - floor, axis=-1)
    best = 0
    for column in nearer.T:
        if column.all():  # no end in sight: the floor itself looks like the product here, not a leg
            continue
        best = max(best, int(np.argmin(column)))  # rows from the base down to the first floor-like one
    return float(best)


def _depth_gap(depth: np.ndarray, mask: np.ndarray, bottom: int) -> float:
    """How much nearer the product is than the floor beside its base (depth: larger = nearer)."""
    s = mask.shape[0]
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    product = float(np.median(depth[inner if inner.any() else mask]))
    band = np.zeros_like(mask)
    band[max(0, bottom - 1) : bottom + 2] = True
    cols = np.nonzero(mask[bottom])[0]
    pad = max(2, s // 16)
    side = np.zeros_like(mask)
    side[:, max(0, cols[0] - 2 * pad) : max(0, cols[0] - pad)] = True
    side[:, cols[-1] + pad : cols[-1] + 2 * pad] = True
    around = band & side & ~mask
    if around.sum() < 2:
        return 0.0
    return product - float(np.median(depth[around]))


def _scene_scale(image, usable, glass, s) -> dict:
    """The scene's size class from its floor tile period and its window, each read where it can be: the
    class whose renderer scale is nearest on a log scale."""
    period, height = _tile_period(image, usable), _window_height(glass)
    tile = period / s if period else None
    window = height / s if height else None
    votes = []
    if window is not None:
        inner = {k: v * 0.8 for k, v in WINDOW_HEIGHT.items()}  # the glass, less its frame
        votes.append(_nearest_class(window, inner))
    if tile is not None:
        votes.append(_nearest_class(tile, TILE_PERIOD))
    scene = votes[-1] if votes else None  # the tiles are the sharper cue; the window decides without them
    return {"tile_period": tile, "window": window, "scene_size": scene}


def _nearest_class(value: float, scale: dict[str, float]) -> str:
    return min(SIZE_CLASSES, key=lambda k: abs(np.log(value / scale[k])))


def _window_height(glass: np.ndarray) -> float | None:
    """Height (px) of the window's glass, from the bounding box of the glass pixels (specks left out).
    Its glass is ~0.62x as wide as high, so the width stands in where the product or the canvas top cuts
    the height; None without a window."""
    n, comp, stats, _ = cv2.connectedComponentsWithStats(glass.astype(np.uint8), connectivity=8)
    if n < 2 or stats[1:, cv2.CC_STAT_AREA].max() < 3:
        return None
    # the largest glass region and whatever glass lies within its own size of it (the product can split it)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    bx, by, bw, bh = stats[big, :4]
    reach = max(bw, bh)
    keep = [
        i for i in range(1, n)
        if stats[i, cv2.CC_STAT_AREA] >= 3
        and abs(stats[i, 0] + stats[i, 2] / 2 - bx - bw / 2) <= reach
        and abs(stats[i, 1] + stats[i, 3] / 2 - by - bh / 2) <= reach
    ]  # fmt: skip
    x0 = min(stats[i, cv2.CC_STAT_LEFT] for i in keep)
    y0 = min(stats[i, cv2.CC_STAT_TOP] for i in keep)
    x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in keep)
    y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in keep)
    return float(max(y1 - y0, (x1 - x0) / 0.62))


def _tile_period(image: np.ndarray, usable: np.ndarray) -> float | None:
    """The period (px) of the vertical tile lines, from the spectrum of the column profile."""
    s = image.shape[0]
    lum = image.mean(-1)
    # Rows free of the product, decor and window give a clean profile: each pixel's deviation from its
    # row's median, then per column the median over those rows.
    clean = usable.all(axis=1)
    if clean.sum() < 4:
        return None
    sub = lum[clean]
    profile = np.median(sub - np.median(sub, axis=1, keepdims=True), axis=0)
    profile -= profile.mean()
    if np.abs(profile).max() < 1.5:
        return None
    # The strongest frequency of the profile, or the lowest sub-multiple of it that is nearly as strong
    # (a coarse grid of thin lines has harmonics as strong as its fundamental).
    pad = 8 * s
    power = np.abs(np.fft.rfft(profile, pad)) ** 2
    freqs = np.fft.rfftfreq(pad)
    band = freqs >= 1.0 / (0.6 * s)
    best = int(np.argmax(np.where(band, power, 0)))
    for divisor in (4, 3, 2):
        lo, hi = int(best / divisor * 0.92), int(best / divisor * 1.08) + 1
        if freqs[lo] >= 1.0 / (0.6 * s) and power[lo:hi].max() >= 0.5 * power[best]:
            best = lo + int(np.argmax(power[lo:hi]))
            break
    return float(1.0 / freqs[best])
