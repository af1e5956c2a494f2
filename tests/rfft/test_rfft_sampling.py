"""rfft.sampling against the engine: the same images with gradients off, gradients where they belong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.conditioning import paste_back
from engine.config import ConditioningConfig, GeneratorConfig
from engine.generate import GenerateStage
from engine.prepare import PromptPolicy, condition_row, stack_rows
from engine.samples import SAMPLES_DIR
from rfft import sampling

SIZE, STEPS = 64, 4


def _batch(skus=("bottle-001", "mug-002", "box-007"), attempt=1):
    cond = ConditioningConfig(size=SIZE)
    rows = []
    for sku in skus:
        path = next(SAMPLES_DIR.glob(f"{sku}.*"))
        rows.append(condition_row(sku, path.read_bytes(), str(path), attempt, cond, PromptPolicy()))
    return stack_rows(rows)


@pytest.fixture(scope="module")
def stage():
    return GenerateStage(GeneratorConfig(base_model="tiny", size=SIZE, steps=STEPS, device="cpu"))


def _prep(stage, batch):
    return sampling.prepare_batch(stage.pipe, batch, STEPS, SIZE)


def test_sample_matches_engine_pipeline(stage):
    batch = _batch()
    engine_out = stage(batch)["generated"]
    prep = _prep(stage, batch)
    images = sampling.sample(stage.pipe, stage.pipe.controlnet, prep, guidance_scale=7.5)
    ours = paste_back(images.permute(0, 2, 3, 1).numpy(), batch["product_rgba"])
    assert ours.shape == engine_out.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(ours, engine_out)
    # and the images differ across rows (the check would be vacuous on a constant output)
    assert np.abs(ours[0].astype(int) - ours[1].astype(int)).max() > 0


def test_sample_depends_on_seed(stage):
    a = sampling.sample(stage.pipe, stage.pipe.controlnet, _prep(stage, _batch(("mug-002",), attempt=1)))
    b = sampling.sample(stage.pipe, stage.pipe.controlnet, _prep(stage, _batch(("mug-002",), attempt=2)))
    assert (a - b).abs().max() > 1e-3


def test_torch_paste_back_matches_engine():
    rng = np.random.default_rng(0)
    gen = rng.random((2, 8, 8, 3)).astype(np.float32)
    product = rng.integers(0, 256, (2, 8, 8, 4), dtype=np.uint8)
    product[..., 3] = rng.choice([0, 255, 128], (2, 8, 8))
    # engine rounds the generated image to uint8 first; do the same so only the blend is compared
    gen_u8 = (gen * 255).round().astype(np.uint8)
    expected = paste_back(gen_u8, product)
    ours = sampling.paste_back(
        torch.from_numpy(gen_u8).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(product).permute(0, 3, 1, 2) / 255
    )
    ours_u8 = (ours.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert np.abs(ours_u8.astype(int) - expected.astype(int)).max() <= 1
    opaque = product[..., 3] == 255
    np.testing.assert_array_equal(ours_u8[opaque], product[..., :3][opaque])


def test_rollout_gradients_reach_controlnet_only_through_the_graded_step(stage):
    pipe = stage.pipe
    prep = _prep(stage, _batch(("lamp-003",)))
    controlnet = pipe.controlnet
    pipe.unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    controlnet.requires_grad_(True)
    try:
        out = sampling.rollout(pipe, controlnet, prep, grad_step=STEPS - 2, reference=controlnet)
        assert out.images.shape == (1, 3, SIZE, SIZE) and out.images.requires_grad
        assert not out.latents.requires_grad and not out.ref_noise_pred_text.requires_grad
        # same network at the same x_t: the reference halves equal the trainable ones
        torch.testing.assert_close(out.ref_noise_pred_text, out.noise_pred_text.detach())
        # product pixels carry no gradient: paste-back overwrites them
        out.images.mean().backward()
        grads = [p.grad for p in controlnet.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
        assert all(p.grad is None for p in pipe.unet.parameters())
    finally:
        controlnet.zero_grad(set_to_none=True)
        controlnet.requires_grad_(False)
