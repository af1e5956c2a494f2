"""Saliency of the generated image (the paper's I_s, from U^2-Net): the real U^2-Net, or a small U^2-Net-style model.

``load_saliency`` accepts:

- ``"paper"``: U^2-Net itself (``rfnet.u2net``, the official structure and parameter names), random weights;
- a ``.pth`` file: the official weights, ``u2net.pth`` (U^2-Net) or ``u2netp.pth`` (U^2-Net-small), the variant
  read off the file's shapes and every weight checked (a file whose keys do not fit fails, naming them);
- ``"tiny"``: a small U^2-Net-style model with random weights, for tests;
- ``"toy"``: a U^2-Net-style model (``TOY`` sizes) trained by ``adloop train-maps`` on the synthetic scenes of
  ``rfnet.synth``, shipped in ``rfnet/assets/toy/saliency``;
- a folder written by ``save_saliency`` (``config.json``, a ``SaliencyConfig``, + ``model.safetensors``).

The U^2-Net-style model (``U2NetStyle``) keeps U^2-Net's outer U of residual U-blocks with side outputs fused
by a 1x1 conv, with configurable heights and widths, and no dilated RSU-4F stages; it is what ``train-maps``
trains. Every model comes wrapped in a ``SaliencyEstimator``: (B, 3, H, W) float in [0, 1] -> (B, 1, H, W) in
[0, 1], detached, after resizing to the model's input size and normalising with ImageNet statistics (U^2-Net's
own test-time preprocessing, which divides by the image's maximum where this divides by 255). The map is
min-max normalised per image like U^2-Net's own inference, or, with ``SaliencyConfig.minmax`` false (``toy``),
the sigmoid itself, so a dim object stays dim.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from cluster.configs import from_dict
from rfnet.config import DEFAULT_PRESET, TOY_ASSETS
from rfnet.preprocess import IMAGE_MEAN, IMAGE_STD, resize
from rfnet.u2net import INPUT_SIZE as U2NET_INPUT_SIZE
from rfnet.u2net import U2Net
from rfnet.weights import PretrainedWeightsError, load_checked


@dataclass
class SaliencyConfig:
    """Sizes of the U^2-Net-style saliency model (``U2NetStyle``)."""

    heights: tuple[int, ...] = (4, 3, 3)
    """RSU height (levels of the inner U) of each outer stage, shallow to deep."""
    mid_channels: tuple[int, ...] = (4, 8, 8)
    """Inner width of each stage's RSU."""
    out_channels: tuple[int, ...] = (8, 16, 16)
    """Output width of each stage."""
    input_size: int = 64
    """Images are resized to this square before the model."""
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


class U2NetStyle(nn.Module):
    """U^2-Net-style: an outer U of RSU stages with deep-supervision side outputs fused by a 1x1 conv; returns logits."""

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
        model: a saliency model returning (B, 1, h, w) logits (or a DDP wrapper of one).
        images: (B, 3, H, W) float in [0, 1]; resized to ``input_size`` first.
        input_size: the model's input side.
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

    def __init__(self, model: nn.Module, input_size: int, minmax: bool = True) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_size, self.minmax = input_size, minmax
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> SaliencyEstimator:  # frozen: never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(saliency_logits(self.model, images.detach(), self.input_size, self.mean, self.std))
        if not self.minmax:
            return s
        lo = s.amin(dim=(2, 3), keepdim=True)
        hi = s.amax(dim=(2, 3), keepdim=True)
        return (s - lo) / (hi - lo).clamp_min(1e-6)


TOY = SaliencyConfig(
    heights=(4, 3, 3), mid_channels=(6, 12, 16), out_channels=(8, 16, 32), input_size=64, minmax=False
)
"""The sizes of the ``toy`` saliency model (about 60 k parameters, 64 px input, sigmoid output)."""
TOY_SALIENCY = os.path.join(TOY_ASSETS, "saliency")
"""The shipped ``toy`` saliency model (``save_saliency`` layout)."""


def save_saliency(model: U2NetStyle, folder: str) -> None:
    """Write ``config.json`` + ``model.safetensors`` that ``load_saliency(folder)`` reads."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(asdict(model.cfg), f, indent=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))


def load_u2net(path: str) -> U2Net:
    """The official U^2-Net weights in ``path`` (``u2net.pth`` or ``u2netp.pth``, a ``torch.save``d state dict)
    in the variant whose shapes they have, every weight loaded.

    Raises:
        PretrainedWeightsError: not a state dict, or its keys or shapes do not fit U^2-Net (all named).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle of anything else, a truncated download: all mean "not these weights"
        raise PretrainedWeightsError(f"{path}: not a U^2-Net state dict ({type(e).__name__}: {e})") from None
    # The two variants have the same keys; stage 1's inner width tells them apart (32 full, 16 small).
    probe = state.get("stage1.rebnconv1.conv_s1.weight") if isinstance(state, dict) else None
    variant = "small" if probe is not None and probe.shape[0] == 16 else "full"
    model = U2Net(variant)
    # Checkpoints saved before torch 0.4.1 have no BatchNorm step counters; inference never reads them.
    load_checked(model, state, path, f"U^2-Net ({variant})", optional=("num_batches_tracked",))
    return model


def _load_style(folder: str) -> U2NetStyle:
    cfg_path, weights = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    with open(cfg_path) as f:
        try:
            cfg = from_dict(SaliencyConfig, json.load(f))
        except ValueError as e:  # unknown fields, or sizes SaliencyConfig refuses
            raise PretrainedWeightsError(f"{cfg_path}: not a U^2-Net-style saliency config: {e}") from None
    model = U2NetStyle(cfg)
    load_checked(model, load_file(weights), weights, "the U^2-Net-style model of config.json")
    return model


def load_saliency(name: str = DEFAULT_PRESET, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Build or load the saliency model.

    Args:
        name: ``"tiny"``, ``"paper"``, ``"toy"``, an official ``.pth`` file or a folder written by
            ``save_saliency``.
        device: where to put it.
        dtype: weight dtype (frozen model; fp32 on CPU).

    Raises:
        FileNotFoundError: ``name`` is not a preset, a ``.pth`` file or a folder with ``config.json`` +
            ``model.safetensors``.
        PretrainedWeightsError: the file or folder does not hold weights that fit (named, with the keys).
    """
    if name == "toy":
        name = TOY_SALIENCY
    if name in ("tiny", "paper"):
        with torch.random.fork_rng(devices=[]):  # the same random model in every process, global RNG untouched
            torch.manual_seed(0)
            if name == "tiny":
                cfg = SaliencyConfig()
                model = SaliencyEstimator(U2NetStyle(cfg), cfg.input_size, cfg.minmax)
            else:
                model = SaliencyEstimator(U2Net("full"), U2NET_INPUT_SIZE)
    elif os.path.isfile(name) and name.endswith((".pth", ".pt")):
        model = SaliencyEstimator(load_u2net(name), U2NET_INPUT_SIZE)
    elif os.path.isfile(os.path.join(name, "config.json")) and os.path.isfile(os.path.join(name, "model.safetensors")):
        style = _load_style(name)
        model = SaliencyEstimator(style, style.cfg.input_size, style.cfg.minmax)
    else:
        raise FileNotFoundError(
            f"saliency model {name!r}: expected 'tiny', 'paper', 'toy', a U^2-Net .pth file (u2net.pth, u2netp.pth) "
            "or a folder with config.json + model.safetensors"
        )
    return model.to(device=device, dtype=dtype)
