"""Depth of the generated image (the paper's I_d, from DPT): a transformers depth-estimation model.

``load_depth`` accepts ``"tiny"`` (a random-weight ``DPTForDepthEstimation`` built from a small
``DPTConfig``, for tests), ``"paper"`` (DPT-Large sizes, random weights, for cost measurements), ``"toy"``
(a small DPT trained by ``adloop train-maps`` on the synthetic scenes of ``rfnet.synth``, shipped in
``rfnet/assets/toy/depth``) or a local transformers folder (e.g. a downloaded ``Intel/dpt-hybrid-midas``;
any ``AutoModelForDepthEstimation`` works). The wrapper maps (B, 3, H, W) float images in [0, 1] to
(B, 1, H, W) maps in [0, 1], always without gradients: RFFT detaches depth (docs/paper.md §8, Q7).

How the prediction becomes a [0, 1] map is a setting of the model folder: ``"minmax": false`` in its
``preprocessor_config.json`` clamps the prediction (a model trained to output the [0, 1] map itself, like
``toy``, whose wall and floor depths carry meaning across images); without the key, or ``true``, each
predicted map is min-max normalised per image (what the relative depth of a real DPT/MiDaS needs).
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForDepthEstimation, DPTConfig, DPTForDepthEstimation
from transformers.models.auto.modeling_auto import MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES

from rfnet.config import DEFAULT_PRESET, TOY_ASSETS
from rfnet.preprocess import resize
from rfnet.weights import load_pretrained

DEPTH_TYPES = tuple(MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES)
"""The ``model_type`` values of transformers' depth-estimation models (DPT, GLPN, Depth Anything, ...)."""
TOY_DEPTH = os.path.join(TOY_ASSETS, "depth")
"""The shipped ``toy`` depth model (``save_depth`` layout)."""


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


TOY_DPT: dict = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [16, 32, 32, 64],
    "reassemble_factors": [4, 2, 1, 0.5],
    "fusion_hidden_size": 16,
    "use_auxiliary_head": False,
}
"""``DPTConfig`` kwargs of the ``toy`` depth model: 64 px input, 8 px patches (8 x 8 tokens), 4 layers of
width 64; the head's output is 128 px, the engine's canvas. About 0.3 M parameters."""


def toy_dpt_config() -> DPTConfig:
    return DPTConfig(**TOY_DPT)


def predict_depth(
    model: nn.Module, images: torch.Tensor, input_size: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """The raw prediction of a transformers depth model, differentiable (training uses it; ``DepthEstimator``
    wraps it).

    Args:
        model: a transformers depth-estimation model (``predicted_depth`` output).
        images: (B, 3, H, W) float in [0, 1].
        input_size: the model's square input side; images are resized to it.
        mean, std: (1, 3, 1, 1) input normalisation.

    Returns:
        (B, 1, H, W) float32, the prediction resized back to the images' size (not clamped or normalised).
    """
    h, w = images.shape[-2:]
    x = resize(images.float(), input_size)
    x = ((x - mean) / std).to(next(model.parameters()).dtype)
    depth = model(pixel_values=x).predicted_depth.float().unsqueeze(1)
    if depth.shape[-2:] != (h, w):
        depth = F.interpolate(depth, size=(h, w), mode="bilinear", align_corners=False)
    return depth


class DepthEstimator(nn.Module):
    """A frozen depth model with its own input size, normalisation and output mapping (``minmax``)."""

    def __init__(
        self,
        model: nn.Module,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        minmax: bool = True,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_size = input_size
        self.minmax = minmax
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DepthEstimator:  # frozen: never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, 1, H, W) float in [0, 1], detached."""
        depth = predict_depth(self.model, images.detach(), self.input_size, self.mean, self.std)
        if not self.minmax:
            return depth.clamp(0, 1)
        lo = depth.amin(dim=(2, 3), keepdim=True)
        hi = depth.amax(dim=(2, 3), keepdim=True)
        return (depth - lo) / (hi - lo).clamp_min(1e-6)


def save_depth(
    model: nn.Module,
    folder: str,
    input_size: int,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    minmax: bool = True,
) -> None:
    """Write a transformers folder (``save_pretrained``) + ``preprocessor_config.json`` that ``load_depth``
    reads back with the same input size, normalisation and output mapping."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "do_resize": True,
        "size": {"height": input_size, "width": input_size},
        "keep_aspect_ratio": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "minmax": minmax,
    }
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)


# DPT's first fusion layer gets no residual input, so its residual conv never runs, and the released DPT
# checkpoints (converted from the original code, which has no such layer) lack it.
_NEVER_RUN = "fusion_stage.layers.0.residual_layer1"


def load_depth_model(path: str) -> nn.Module:
    """The transformers depth-estimation model in folder ``path``, every weight it runs loaded.

    Raises:
        PretrainedWeightsError: ``config.json`` names no depth-estimation architecture, or the weights miss keys
            the model runs, carry keys it does not have, or differ in shape (all listed, the folder named).
    """
    return load_pretrained(
        path, AutoModelForDepthEstimation, DEPTH_TYPES, "a depth-estimation architecture", (_NEVER_RUN,)
    )


def load_depth(name: str = DEFAULT_PRESET, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Build or load the depth model.

    Args:
        name: ``"tiny"``, ``"paper"``, ``"toy"`` or a local transformers depth-estimation folder.
        device: where to put it.
        dtype: weight dtype (frozen model; fp32 on CPU).

    Raises:
        FileNotFoundError: ``name`` is not a preset and not an existing folder (or the ``toy`` weights are
            missing from the package).
        PretrainedWeightsError: the folder is not a depth-estimation model, or its weights do not fit.
    """
    mean, std, size, minmax = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 384, True
    if name == "toy":
        if not os.path.isfile(os.path.join(TOY_DEPTH, "config.json")):
            raise FileNotFoundError(f"depth model 'toy': no weights in {TOY_DEPTH} (adloop train-maps writes them)")
        name = TOY_DEPTH
    if name == "tiny":
        with torch.random.fork_rng(devices=[]):  # the same random model in every process, global RNG untouched
            torch.manual_seed(0)
            model, size = DPTForDepthEstimation(tiny_dpt_config()), 32
    elif name == "paper":
        model = DPTForDepthEstimation(DPTConfig(use_auxiliary_head=False))
    elif os.path.isdir(name):
        model = load_depth_model(name)
        proc = os.path.join(name, "preprocessor_config.json")
        if os.path.exists(proc):
            with open(proc) as f:
                p = json.load(f)
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
            s = p.get("size", {})
            size = int(s.get("height", size) if isinstance(s, dict) else s)
            minmax = bool(p.get("minmax", True))
    else:
        raise FileNotFoundError(
            f"depth model {name!r}: expected 'tiny', 'paper', 'toy' or a local transformers folder"
        )
    return DepthEstimator(model, size, mean, std, minmax).to(device=device, dtype=dtype)
