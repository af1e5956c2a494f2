"""The shipped ``toy`` generator: it loads as a preset (no ControlNet flag needed), keeps its name in the
manifests, paints backgrounds that are scenes rather than noise, and leaves product pixels untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.config import ConditioningConfig, GeneratorConfig
from engine.generate import GenerateStage
from engine.model_paths import TOY_GENERATOR, checked_paths, describe
from engine.prepare import PromptPolicy, condition_row, stack_rows

SAMPLES = Path(__file__).resolve().parents[2] / "engine" / "assets" / "samples"
SIZE = 128


def _batch(size: int) -> dict[str, np.ndarray]:
    cond = ConditioningConfig(size=size)
    rows = [
        condition_row(p.stem, p.read_bytes(), str(p), 1, cond, PromptPolicy()) for p in sorted(SAMPLES.iterdir())[:3]
    ]
    return stack_rows(rows)


def _roughness(images: np.ndarray, background: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours, over background pixels (0-255 units)."""
    x = images.astype(np.float32)
    d = np.abs(np.diff(x, axis=2)).mean(axis=-1)
    return float(d[background[:, :, 1:]].mean())


@pytest.fixture(scope="module")
def toy_and_tiny():
    batch = _batch(SIZE)
    toy = GenerateStage(GeneratorConfig(base_model="toy", size=SIZE, steps=10))(batch)["generated"]
    tiny = GenerateStage(GeneratorConfig(base_model="tiny", size=SIZE, steps=10))(batch)["generated"]
    return batch, toy, tiny


def test_the_toy_preset_is_a_shipped_complete_pipeline_folder():
    assert (TOY_GENERATOR / "model_index.json").is_file()
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet"):
        assert (TOY_GENERATOR / component).is_dir(), component
    weights = sum(f.stat().st_size for f in TOY_GENERATOR.rglob("*.safetensors"))
    assert weights < 22 * 2**20, f"toy generator weights are {weights / 2**20:.1f} MB"
    cfg = checked_paths(GeneratorConfig(base_model="toy"))
    assert cfg.base_model == "toy" and cfg.controlnet is None
    assert describe(cfg) == {"base_model": "toy", "controlnet": "toy-controlnet", "lora": ""}


def test_toy_backgrounds_are_smooth_scenes_not_noise_and_products_are_untouched(toy_and_tiny):
    batch, toy, tiny = toy_and_tiny
    alpha = batch["product_rgba"][..., 3]
    inside = alpha == 255
    assert np.array_equal(toy[inside], batch["product_rgba"][..., :3][inside])
    background = alpha == 0
    # The random preset paints pixel noise; the trained one paints walls and floors (flat areas, lines).
    assert _roughness(toy, background) < 0.5 * _roughness(tiny, background)
    # ... and not a blank: its backgrounds vary across the canvas (wall vs floor, tiles, windows).
    assert all(toy[i][background[i]].std(axis=0).mean() > 8 for i in range(len(toy)))
