"""Layout parity with the authors' released sampler (docs/paper.md §1.1, docs/design.md "The generation path").

RFNet and the released ControlNet were trained on products laid out by the authors' ``golden_ratio_center_zoom``
(and, for ``keep_loc``, their whole-image resize), so inside the product adloop's layout must equal theirs.
``_reference_center_zoom`` and ``_reference_keep_loc`` are written here from the published description of
those functions, independently of ``engine.conditioning``, and every case compares the two on RGBA cutouts:
soft edges, odd sizes, a product touching the border, tall, wide and square boxes, enlarging and shrinking.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.conditioning import decode_product, layout, white_key
from engine.config import ConditioningConfig


def _reference_center_zoom(rgba: np.ndarray, canvas: int, scale: float) -> np.ndarray:
    """The authors' centre layout, from its description: mask alpha/255 >= 0.5, crop [y1:y2, x1:x2] between
    the first and last masked row/column, integer fit into int(canvas * scale), INTER_AREA, top at
    int(canvas // 2 - new_h / 2)."""
    binary = (rgba[..., 3] / 255.0 >= 0.5).astype(np.uint8)
    cols = np.nonzero(binary.sum(axis=0))[0]
    rows = np.nonzero(binary.sum(axis=1))[0]
    x1, x2, y1, y2 = cols[0], cols[-1], rows[0], rows[-1]
    crop = rgba[y1:y2, x1:x2, :]
    limit_h = limit_w = int(canvas * scale)
    ch, cw = crop.shape[:2]
    if ch >= cw:
        nh = min(limit_h, int(limit_w / cw * ch))
        nw = int(nh / ch * cw)
    else:
        nw = min(limit_w, int(limit_h / ch * cw))
        nh = int(nw / cw * ch)
    small = cv2.resize(np.ascontiguousarray(crop), (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((canvas, canvas, 4), np.float64)
    top = int(canvas // 2 - nh / 2)
    left = max(0, (canvas - nw) // 2)
    out[top : top + nh, left : left + nw, :] = small
    return out.astype(np.uint8)


def _reference_keep_loc(rgba: np.ndarray, canvas: int) -> np.ndarray:
    """The authors' keep_loc resize, from its description: shorter side to the canvas, both sides rounded to
    multiples of 64, LANCZOS4 when enlarging and AREA otherwise."""
    h, w = rgba.shape[:2]
    k = canvas / min(h, w)
    out_h, out_w = int(np.round(h * k / 64.0)) * 64, int(np.round(w * k / 64.0)) * 64
    flag = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(rgba), (out_w, out_h), interpolation=flag)


def _cutout(shape, box, soft: float = 0.0, ellipse: bool = False, seed: int = 0) -> np.ndarray:
    """An RGBA cutout: textured RGB everywhere, alpha 255 inside ``box`` (x0, y0, x1, y1) or its ellipse,
    blurred by ``soft`` px for a soft edge."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 7 + yy * 3) % 256, (xx * 2 + yy * 11) % 256, rng.integers(0, 256, (h, w))], axis=-1)
    x0, y0, x1, y1 = box
    if ellipse:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        alpha = ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1.0).astype(np.float32) * 255
    else:
        alpha = np.zeros((h, w), np.float32)
        alpha[y0:y1, x0:x1] = 255
    if soft:
        alpha = cv2.GaussianBlur(alpha, (0, 0), soft)
    return np.dstack([rgb, np.clip(alpha, 0, 255).round()]).astype(np.uint8)


CASES = {
    "soft-ellipse-odd-size": _cutout((517, 333), (40, 61, 300, 470), soft=3.0, ellipse=True),
    "wide-box": _cutout((401, 601), (100, 120, 500, 270)),
    "touching-the-border": _cutout((255, 257), (0, 30, 200, 255), soft=1.5),
    "tall-thin": _cutout((333, 128), (50, 10, 110, 320), soft=0.8),
    "square-box": _cutout((300, 300), (13, 13, 214, 214)),
    "small-enlarged": _cutout((64, 64), (21, 17, 41, 30), soft=0.6, ellipse=True),
    "soft-everywhere": _cutout((211, 199), (30, 40, 170, 180), soft=12.0, ellipse=True),
}


def _inside_product_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    inside = ref[..., 3] >= 128
    assert inside.sum() > 50
    return float(np.abs(ours.astype(np.int16) - ref.astype(np.int16))[inside].mean())


@pytest.mark.parametrize("size", [512, 128])
@pytest.mark.parametrize("scale", [0.7, 0.75, 0.78])
@pytest.mark.parametrize("case", list(CASES))
def test_centre_layout_equals_the_authors(case, scale, size):
    rgba = CASES[case]
    ours = layout(rgba, ConditioningConfig(size=size), image_scale=scale)
    ref = _reference_center_zoom(rgba, size, scale)
    assert _inside_product_diff(ours, ref) <= 1.0
    # The arithmetic is the same, so in practice the whole canvas is: placement and size included.
    assert np.abs(ours.astype(np.int16) - ref.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("side", [200, 256, 700, 1024])
@pytest.mark.parametrize("case", ["soft-ellipse-odd-size", "touching-the-border"])
def test_keep_loc_on_square_sources_equals_the_authors(case, side):
    rgba = cv2.resize(CASES[case], (side, side), interpolation=cv2.INTER_AREA)
    ours = layout(rgba, ConditioningConfig(size=512, keep_loc=True))
    ref = _reference_keep_loc(rgba, 512)
    assert ref.shape == ours.shape
    assert _inside_product_diff(ours, ref) <= 1.0
    assert np.abs(ours.astype(np.int16) - ref.astype(np.int16)).max() <= 1


def test_keep_loc_on_a_non_square_source_fits_it_whole():
    """The authors' canvas would follow the source's aspect; ours is square, so the image is fitted by its
    longer side and centred, and nothing of the product is cut."""
    rgba = CASES["wide-box"]  # 601 x 401
    ours = layout(rgba, ConditioningConfig(size=512, keep_loc=True))
    ys, xs = np.nonzero(ours[..., 3] >= 128)
    assert xs.min() > 0 and xs.max() < 511 and ys.min() > 0 and ys.max() < 511
    assert (ours[:40, :, 3] == 0).all() and (ours[-40:, :, 3] == 0).all()  # letterboxed


def test_white_keying_of_rgb_inputs_follows_the_authors():
    """Their white_img_add_mask: a pixel is product only when none of its channels is 255."""
    rgb = np.full((48, 48, 3), 255, np.uint8)
    rgb[8:40, 8:40] = (30, 90, 200)
    rgb[10:14, 10:14] = (255, 0, 0)  # saturated red: background for the authors
    rgb[20:24, 20:24] = (254, 254, 254)  # off-white: product for the authors
    rgb[30:34, 30:34] = (255, 255, 254)
    expected = np.where((rgb != 255).all(axis=2), 255, 0).astype(np.uint8)
    assert (white_key(rgb) == expected).all()
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    decoded = decode_product(png, "white.png", ConditioningConfig(size=64))
    assert (decoded[..., 3] == expected).all() and (decoded[..., :3] == rgb).all()


def test_control_image_zeroes_the_background_at_the_authors_cut():
    """Their control image: canny of the product RGB with pixels of alpha / 255 < 0.5 set to 0."""
    from engine.conditioning import build_condition

    cfg = ConditioningConfig(size=128)
    canvas = layout(CASES["soft-ellipse-odd-size"], cfg, image_scale=0.75)
    rgb = canvas[..., :3].copy()
    rgb[canvas[..., 3] / 255.0 < 0.5] = 0
    expected = cv2.Canny(rgb, 100, 200)
    control = build_condition(canvas, cfg).control
    assert (control == expected[..., None]).all()
