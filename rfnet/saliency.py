"""Saliency of the generated image (the paper's I_s, from U^2-Net): a U^2-Net-style model defined here.

U^2-Net (Qin et al. 2020) stacks residual U-blocks (RSU) into an outer U: each encoder stage is a small
U-Net with a residual connection, each decoder stage fuses the upsampled deeper stage with its skip,
every decoder stage emits a side map, and a 1x1 conv fuses the side maps. This module keeps that
structure with configurable heights and widths; it is *not* weight-compatible with the original
``u2net.pth`` (the dilated RSU-4F stages are plain RSU-4 here). Weights are saved and loaded as a folder
with ``config.json`` (``SaliencyConfig``) + ``model.safetensors``.

``load_saliency`` accepts ``"tiny"``, ``"paper"`` (U^2-Net sizes, random weights), ``"toy"`` (``TOY`` sizes,
trained by ``adloop train-maps`` on the synthetic scenes of ``rfnet.synth``, shipped in
``rfnet/assets/toy/saliency``) or such a folder. The wrapper maps (B, 3, H, W) float in [0, 1] to
(B, 1, H, W) in [0, 1], detached: min-max normalised per image like U^2-Net's own inference, or, with
``SaliencyConfig.minmax`` false (``toy``), the sigmoid itself, so a dim object stays dim.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rfnet.config import TOY_ASSETS
from rfnet.preprocess import IMAGE_MEAN, IMAGE_STD, resize


@dataclass
class SaliencyConfig:
    """Sizes of the U^2-Net-style saliency model."""

    heights: tuple[int, ...] = (4, 3, 3)
    """RSU height (levels of the inner U) of each outer stage, shallow to deep."""
    mid_channels: tuple[int, ...] = (4, 8, 8)
    """Inner width of each stage's RSU."""
    out_channels: tuple[int, ...] = (8, 16, 16)
    """Output width of each stage."""
    input_size: int = 64
    """Images are resized to this square before the model (U^2-Net: 320)."""
    minmax: bool = True
    """Min-max normalise each output map (U^2-Net's inference); False returns the sigmoid as it is."""

    def __post_init__(self) -> None:
        self.heights, self.mid_channels, self.out_channels = (
            tuple(self.heights),
            tuple(self.mid_channels),
            tuple(self.out_channels),
        )
        if not len(self.heights) == len(self.mid_channels) == len(self.out_channels) >= 2:
            raise ValueError("heights, mid_channels and out_channels must have the same length (>= 2)")
        if min(self.heights) < 2:
            raise ValueError("an RSU block needs height >= 2")
        if self.input_size < 2 ** len(self.heights):
            raise ValueError(f"input_size {self.input_size} is too small for {len(self.heights)} stages")


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2:] == ref.shape[-2:] else F.interpolate(x, size=ref.shape[-2:], mode="bilinear")


class RSU(nn.Module):
    """Residual U-block: an in-conv, a small U-Net of ``height`` levels on top, and a residual sum."""

    def __init__(self, height: int, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.inp = _conv(cin, cout)
        self.enc = nn.ModuleList([_conv(cout, mid)] + [_conv(mid, mid) for _ in range(height - 2)])
        self.bottom = _conv(mid, mid, dilation=2)
        self.dec = nn.ModuleList([_conv(2 * mid, mid) for _ in range(height - 2)] + [_conv(2 * mid, cout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.inp(x)
        skips, h = [], x_in
        for i, layer in enumerate(self.enc):
            h = layer(h)
            skips.append(h)
            if i < len(self.enc) - 1:
                h = F.max_pool2d(h, 2, ceil_mode=True)
        h = self.bottom(h)
        for layer, skip in zip(self.dec, reversed(skips), strict=True):
            h = layer(torch.cat([_up_to(h, skip), skip], dim=1))
        return h + x_in


class U2Net(nn.Module):
    """Outer U of RSU stages with deep-supervision side outputs fused by a 1x1 conv; returns logits."""

    def __init__(self, cfg: SaliencyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, outs = len(cfg.heights), cfg.out_channels
        self.encoders = nn.ModuleList(
            RSU(cfg.heights[i], 3 if i == 0 else outs[i - 1], cfg.mid_channels[i], outs[i]) for i in range(n)
        )
        self.decoders = nn.ModuleList(
            RSU(cfg.heights[i], outs[i + 1] + outs[i], cfg.mid_channels[i], outs[i]) for i in range(n - 1)
        )
        self.sides = nn.ModuleList(nn.Conv2d(outs[i], 1, 3, padding=1) for i in range(n))
        self.fuse = nn.Conv2d(n, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, h = [], x
        for i, enc in enumerate(self.encoders):
            h = enc(h if i == 0 else F.max_pool2d(h, 2, ceil_mode=True))
            feats.append(h)
        decoded = [feats[-1]]
        for i in reversed(range(len(self.decoders))):
            h = self.decoders[i](torch.cat([_up_to(h, feats[i]), feats[i]], dim=1))
            decoded.insert(0, h)
        sides = [_up_to(side(d), x) for side, d in zip(self.sides, decoded, strict=True)]
        return self.fuse(torch.cat(sides, dim=1))


def saliency_logits(
    model: nn.Module, images: torch.Tensor, input_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """The model's raw logits at the images' size, differentiable (training uses it; ``SaliencyEstimator``
    wraps it).

    Args:
        model: the U^2-Net-style model (or a DDP wrapper of it).
        images: (B, 3, H, W) float in [0, 1]; resized to ``input_size`` first.
        input_size: the model's input side (``SaliencyConfig.input_size``).
        mean, std: (1, 3, 1, 1) input normalisation (ImageNet statistics).

    Returns:
        (B, 1, H, W) float32 logits.
    """
    h, w = images.shape[-2:]
    x = resize(images.float(), input_size)
    x = ((x - mean) / std).to(next(model.parameters()).dtype)
    logits = model(x).float()
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits


class SaliencyEstimator(nn.Module):
    """A frozen saliency model: (B, 3, H, W) in [0, 1] -> (B, 1, H, W) in [0, 1], detached."""

    def __init__(self, model: U2Net) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> SaliencyEstimator:  # frozen: never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(saliency_logits(self.model, images.detach(), self.model.cfg.input_size, self.mean, self.std))
        if not self.model.cfg.minmax:
            return s
        lo = s.amin(dim=(2, 3), keepdim=True)
        hi = s.amax(dim=(2, 3), keepdim=True)
        return (s - lo) / (hi - lo).clamp_min(1e-6)


PAPER = SaliencyConfig(
    heights=(7, 6, 5, 4, 4, 4),
    mid_channels=(32, 32, 64, 128, 256, 256),
    out_channels=(64, 128, 256, 512, 512, 512),
    input_size=320,
)

TOY = SaliencyConfig(
    heights=(4, 3, 3), mid_channels=(6, 12, 16), out_channels=(8, 16, 32), input_size=64, minmax=False
)
"""The sizes of the ``toy`` saliency model (about 60 k parameters, 64 px input, sigmoid output)."""
TOY_SALIENCY = os.path.join(TOY_ASSETS, "saliency")
"""The shipped ``toy`` saliency model (``save_saliency`` layout)."""


def save_saliency(model: U2Net, folder: str) -> None:
    """Write ``config.json`` + ``model.safetensors`` that ``load_saliency(folder)`` reads."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(asdict(model.cfg), f, indent=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))


def load_saliency(name: str = "tiny", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Build or load the saliency model.

    Args:
        name: ``"tiny"``, ``"paper"``, ``"toy"`` or a folder written by ``save_saliency``.
        device: where to put it.
        dtype: weight dtype (frozen model; fp32 on CPU).

    Raises:
        FileNotFoundError: ``name`` is not a preset and not a folder with ``config.json`` + ``model.safetensors``.
    """
    if name == "toy":
        name = TOY_SALIENCY
    if name in ("tiny", "paper"):
        with torch.random.fork_rng(devices=[]):  # the same random model in every process, global RNG untouched
            torch.manual_seed(0)
            model = U2Net(SaliencyConfig() if name == "tiny" else PAPER)
    else:
        cfg_path, weights = os.path.join(name, "config.json"), os.path.join(name, "model.safetensors")
        if not (os.path.isfile(cfg_path) and os.path.isfile(weights)):
            raise FileNotFoundError(
                f"saliency model {name!r}: expected 'tiny', 'paper', 'toy' or a folder with config.json + model.safetensors"
            )
        with open(cfg_path) as f:
            model = U2Net(SaliencyConfig(**json.load(f)))
        model.load_state_dict(load_file(weights))
    return SaliencyEstimator(model).to(device=device, dtype=dtype)
