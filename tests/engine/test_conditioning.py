"""Product conditioning: decoding every kind of input, layout, masks, control image, paste-back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.conditioning import (
    ProductImageError,
    build_condition,
    decode_product,
    dilation_kernel,
    layout,
    paste_back,
)
from engine.config import ConditioningConfig

CFG = ConditioningConfig(size=128)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _rgba_square(size=64, box=(16, 16, 48, 40), colour=(200, 30, 30, 255)) -> Image.Image:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    img.paste(colour, box)
    return img


# --- decoding: what works -------------------------------------------------------------------------


def test_rgba_alpha_is_the_mask():
    rgba = decode_product(_png(_rgba_square()), "sq.png", CFG)
    assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
    assert (rgba[16:40, 16:48, 3] == 255).all()
    assert rgba[..., 3].sum() == 255 * 32 * 24


def test_white_background_rgb_and_jpeg_are_keyed_on_pure_white():
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((10, 120, 200), (8, 8, 40, 56))
    for data in (_png(img), _png(img, format="JPEG", quality=100, subsampling=0)):
        rgba = decode_product(data, "white.jpg", CFG)
        assert rgba[0, 0, 3] == 0 and rgba[30, 20, 3] == 255


def test_fully_opaque_rgba_falls_back_to_white_keying():
    img = Image.new("RGBA", (32, 32), (255, 255, 255, 255))
    img.paste((0, 0, 0, 255), (4, 4, 12, 12))
    rgba = decode_product(_png(img), "opaque.png", CFG)
    assert rgba[..., 3].sum() == 255 * 64


@pytest.mark.parametrize(
    "make",
    [
        lambda: _gray(),
        lambda: _palette_with_transparency(),
        lambda: _sixteen_bit(),
        lambda: _la(),
    ],
    ids=["grayscale", "palette", "16-bit", "gray+alpha"],
)
def test_grayscale_palette_and_16bit_pngs_work(make):
    rgba = decode_product(_png(make()), "odd.png", CFG)
    assert rgba.shape[-1] == 4 and rgba[..., 3].any() and not rgba[..., 3].all()


def _gray():
    img = Image.new("L", (32, 32), 255)
    img.paste(40, (8, 8, 24, 24))
    return img


def _palette_with_transparency():
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.paste(1, (8, 8, 24, 24))
    img.info["transparency"] = 0
    return img


def _sixteen_bit():
    arr = np.full((32, 32), 65535, np.uint16)
    arr[8:24, 8:24] = 12000
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return img


def _la():
    img = Image.new("LA", (32, 32), (0, 0))
    img.paste((90, 255), (8, 8, 24, 24))
    return img


def test_sixteen_bit_grey_is_scaled_not_clipped():
    rgba = decode_product(_png(_sixteen_bit()), "16.png", CFG)
    # 12000 / 65535 * 255 = 46.7: scaled into range, not clipped to white.
    assert rgba[16, 16, 0] == 47 and rgba[16, 16, 3] == 255 and rgba[0, 0, 3] == 0


def test_cmyk_jpeg_works():
    img = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # CMYK zero ink = white
    img.paste((30, 200, 200, 0), (8, 8, 24, 24))  # RGB (225, 55, 55): no channel at 255, so product
    rgba = decode_product(_png(img, format="JPEG", quality=100), "cmyk.jpg", CFG)
    assert rgba[16, 16, 3] == 255 and rgba[16, 16, 0] > rgba[16, 16, 1]


# --- decoding: bad input gets ProductImageError with a reason and the file named ---------------------


def _bad_inputs():
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    truncated = _png(Image.fromarray(noisy, "RGBA"))[:2000]
    return {
        "empty_file": (b"", CFG),
        "undecodable": (b"this is not an image at all", CFG),
        "undecodable-truncated": (truncated, CFG),
        "no_product_pixels-transparent": (_png(Image.new("RGBA", (32, 32), (9, 9, 9, 0))), CFG),
        "no_product_pixels-white": (_png(Image.new("RGB", (32, 32), (255, 255, 255))), CFG),
        "too_small": (_png(Image.new("RGB", (1, 1), (0, 0, 0))), CFG),
        "too_many_pixels": (_png(Image.new("1", (8000, 6000), 1)), CFG),
        "file_too_large": (_png(_rgba_square()), ConditioningConfig(size=128, max_bytes=10)),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_raises_one_documented_error_naming_the_file(case):
    data, cfg = _bad_inputs()[case]
    with pytest.raises(ProductImageError) as info:
        decode_product(data, f"skus/{case}.png", cfg)
    assert info.value.reason == case.split("-")[0]
    assert info.value.reason in ProductImageError.REASONS
    assert f"skus/{case}.png" in str(info.value)


def test_bomb_header_is_refused_before_pixels_are_decoded():
    # A 40k x 40k header in a few kB: refusing it must not decode 1.6 G pixels.
    data = _png(Image.new("1", (40_000, 40_000), 0))
    assert len(data) < 1_000_000
    with pytest.raises(ProductImageError) as info:
        decode_product(data, "bomb.png", CFG)
    assert info.value.reason == "too_many_pixels"


# --- layout, masks, control, paste-back ---------------------------------------------------------------


def test_layout_centres_and_scales_the_longer_side():
    rgba = decode_product(_png(_rgba_square()), "sq.png", CFG)  # product 32 x 24
    canvas = layout(rgba, CFG, image_scale=0.75)
    ys, xs = np.nonzero(canvas[..., 3])
    # The authors' crop leaves out the box's last row and column (31 x 23), and their sizes truncate.
    assert xs.max() - xs.min() + 1 == 96  # int(0.75 * 128)
    assert ys.max() - ys.min() + 1 == 71  # int(96 / 31 * 23): aspect kept
    assert (xs.min() + xs.max()) / 2 == pytest.approx(63.5, abs=1)
    assert (ys.min() + ys.max()) / 2 == pytest.approx(63.5, abs=1)


def test_keep_loc_keeps_the_placement():
    img = _rgba_square(size=64, box=(0, 0, 16, 16))  # top-left corner
    rgba = decode_product(_png(img), "corner.png", CFG)
    canvas = layout(rgba, ConditioningConfig(size=128, keep_loc=True))
    ys, xs = np.nonzero(canvas[..., 3] >= 128)  # Lanczos (enlarging, as the authors) rings faintly beyond
    assert ys.min() == 0 and xs.min() == 0
    assert ys.max() in (31, 32) and xs.max() in (31, 32)  # 16 px scaled x2


def test_dilation_kernel_scales_with_the_canvas():
    assert dilation_kernel(512) == 20 and dilation_kernel(1024) == 40 and dilation_kernel(128) == 5
    assert dilation_kernel(16) == 1


def test_masks_and_control_image():
    canvas = layout(decode_product(_png(_rgba_square()), "sq.png", CFG), CFG)
    c = build_condition(canvas, CFG)
    alpha = canvas[..., 3]
    assert set(np.unique(c.inpaint_mask)) <= {0, 255}
    # All background is repainted, plus a band of about k/2 px over the product border, no more.
    assert (c.inpaint_mask[alpha == 0] == 255).all()
    band = (c.inpaint_mask == 255) & (alpha > 0)
    assert band.any()
    ys, xs = np.nonzero(alpha == 255)
    interior = alpha[ys.min() + 3 : ys.max() - 2, xs.min() + 3 : xs.max() - 2]
    assert (c.inpaint_mask[ys.min() + 3 : ys.max() - 2, xs.min() + 3 : xs.max() - 2][interior == 255] == 0).all()
    # Control: three equal channels, edges only on the product's silhouette, black elsewhere.
    assert c.control.shape == (128, 128, 3) and (c.control[..., 0] == c.control[..., 2]).all()
    assert c.control.any()
    far = np.ones_like(alpha, bool)
    far[ys.min() - 2 : ys.max() + 3, xs.min() - 2 : xs.max() + 3] = False
    assert not c.control[far].any()
    # Init image: product over white.
    assert (c.image[alpha == 0] == 255).all()


def test_paste_back_keeps_product_pixels_bit_identical():
    rng = np.random.default_rng(0)
    product = rng.integers(0, 256, (2, 32, 32, 4), dtype=np.uint8)
    product[..., 3] = rng.choice([0, 128, 255], (2, 32, 32))
    generated = rng.random((2, 32, 32, 3), dtype=np.float32)
    out = paste_back(generated, product)
    solid, empty = product[..., 3] == 255, product[..., 3] == 0
    assert (out[solid] == product[..., :3][solid]).all()
    assert (out[empty] == (generated[empty] * 255).round().astype(np.uint8)).all()
    half = product[..., 3] == 128
    expected = (128 / 255 * product[..., :3][half] + (1 - 128 / 255) * (generated[half] * 255).round()).round()
    assert np.abs(out[half].astype(int) - expected.astype(int)).max() <= 1
