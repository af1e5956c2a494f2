"""Depth of the generated image (the paper's I_d, from DPT): a transformers depth-estimation model.

``load_depth`` accepts ``"tiny"`` (a random-weight ``DPTForDepthEstimation`` built from a small
``DPTConfig``, for tests), ``"paper"`` (DPT-Large sizes, random weights, for cost measurements) or a
local transformers folder (e.g. a downloaded ``Intel/dpt-hybrid-midas``; any
``AutoModelForDepthEstimation`` works). The wrapper maps (B, 3, H, W) float images in [0, 1] to
(B, 1, H, W) maps in [0, 1] (per-image min-max of the predicted relative depth), always without
gradients: RFFT detaches depth (docs/paper.md §8, Q7).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForDepthEstimation, DPTConfig, DPTForDepthEstimation

from rfnet.preprocess import resize


def tiny_dpt_config() -> DPTConfig:
    return DPTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        reassemble_factors=[4, 2, 1, 0.5],
        fusion_hidden_size=16,
        use_auxiliary_head=False,
    )


class DepthEstimator(nn.Module):
    """A frozen depth model with its own input size and normalisation."""

    def __init__(self, model: nn.Module, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DepthEstimator:  # frozen: never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 1, H, W) float in [0, 1], detached."""
        h, w = images.shape[-2:]
        x = resize(images.detach().float(), self.input_size)
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        depth = self.model(pixel_values=x).predicted_depth.float().unsqueeze(1)
        depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
        lo = depth.amin(dim=(2, 3), keepdim=True)
        hi = depth.amax(dim=(2, 3), keepdim=True)
        return (depth - lo) / (hi - lo).clamp_min(1e-6)


def load_depth(name: str = "tiny", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Build or load the depth model.

    Args:
        name: ``"tiny"``, ``"paper"`` or a local transformers depth-estimation folder.
        device: where to put it.
        dtype: weight dtype (frozen model; fp32 on CPU).

    Raises:
        FileNotFoundError: ``name`` is not a preset and not an existing folder.
    """
    mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 384
    if name == "tiny":
        with torch.random.fork_rng(devices=[]):  # the same random model in every process, global RNG untouched
            torch.manual_seed(0)
            model, size = DPTForDepthEstimation(tiny_dpt_config()), 32
    elif name == "paper":
        model = DPTForDepthEstimation(DPTConfig(use_auxiliary_head=False))
    elif os.path.isdir(name):
        model = AutoModelForDepthEstimation.from_pretrained(name, local_files_only=True)
        proc = os.path.join(name, "preprocessor_config.json")
        if os.path.exists(proc):
            with open(proc) as f:
                p = json.load(f)
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
            s = p.get("size", {})
            size = int(s.get("height", size) if isinstance(s, dict) else s)
    else:
        raise FileNotFoundError(f"depth model {name!r}: expected 'tiny', 'paper' or a local transformers folder")
    return DepthEstimator(model, size, mean, std).to(device=device, dtype=dtype)
