"""The generation stage: a Ray-free callable class that Ray Data (or a plain loop) calls on batches.

It loads the pipeline once (``__init__``) and, per batch, paints a background around each laid-out
product and pastes the product back, so product pixels are bit-identical to the input. Columns in,
columns out; it adds columns and never removes the ones it was given.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from engine.conditioning import paste_back
from engine.config import GeneratorConfig
from engine.models import build_pipeline

# Input columns (B = rows in the batch, S = canvas side):
#   product_rgba (B,S,S,4) uint8, image (B,S,S,3) uint8, inpaint_mask (B,S,S) uint8 {0,255},
#   control (B,S,S,3) uint8, prompt (B,) str, negative_prompt (B,) str, seed (B,) int64
# Added columns:
#   generated (B,S,S,3) uint8, gen_seconds (B,) float64 (the batch's wall time shared out per row)
INPUT_COLUMNS = ("product_rgba", "image", "inpaint_mask", "control", "prompt", "negative_prompt", "seed")


class GenerateStage:
    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        self.pipe = build_pipeline(cfg)
        self.device = self.pipe.device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in INPUT_COLUMNS if c not in batch]
        if missing:
            raise KeyError(f"GenerateStage needs columns {missing}")
        n = len(batch["seed"])
        if n == 0:
            return {
                **batch,
                "generated": np.zeros((0, self.cfg.size, self.cfg.size, 3), np.uint8),
                "gen_seconds": np.zeros(0),
            }
        start = time.perf_counter()
        images = self.generate(
            image=batch["image"],
            inpaint_mask=batch["inpaint_mask"],
            control=batch["control"],
            prompts=[str(p) for p in batch["prompt"]],
            negative_prompts=[str(p) for p in batch["negative_prompt"]],
            seeds=[int(s) for s in batch["seed"]],
        )
        generated = paste_back(images, np.asarray(batch["product_rgba"]))
        seconds = (time.perf_counter() - start) / n
        return {**batch, "generated": generated, "gen_seconds": np.full(n, seconds)}

    @torch.inference_mode()
    def generate(
        self,
        image: np.ndarray,
        inpaint_mask: np.ndarray,
        control: np.ndarray,
        prompts: list[str],
        negative_prompts: list[str],
        seeds: list[int],
    ) -> np.ndarray:
        """Run the pipeline on a batch; returns (B, S, S, 3) float32 in [0, 1] *before* paste-back."""
        size = self.cfg.size
        # One generator per row: row i's noise depends only on seeds[i], so a batch of N equals N
        # single calls and any image can be regenerated alone.
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipe(
            prompt=prompts,
            negative_prompt=negative_prompts,
            image=np.asarray(image, dtype=np.float32) / 255.0,
            mask_image=(np.asarray(inpaint_mask, dtype=np.float32) / 255.0)[..., None],
            control_image=np.asarray(control, dtype=np.float32) / 255.0,
            height=size,
            width=size,
            num_inference_steps=self.cfg.steps,
            guidance_scale=self.cfg.guidance_scale,
            controlnet_conditioning_scale=self.cfg.conditioning_scale,
            generator=generators,
            output_type="np",
        )
        return out.images
