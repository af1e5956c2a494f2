"""RFNet's input preprocessing, defined once for training, the batch scorer, the online scorer and RFFT.

Everything here is tensor in, tensor out, and differentiable (bilinear resizing with antialiasing, an
affine normalisation), so RFFT can backpropagate a reward through it into the generated image. The
normalisation constants live only in this module and travel with the model: ``rfnet.load`` returns the
``Preprocess`` that matches the checkpoint's config.

Conventions (for every function below):

- images are (B, 3, H, W) float in [0, 1]; product cutouts are (B, 4, H, W) float in [0, 1] (RGBA, alpha
  = product mask); depth and saliency maps are (B, 1, H, W) float in [0, 1]; any H, W;
- outputs are (B, 3, S, S) float, S = ``cfg.image_size``, normalised with ``cfg.image_mean`` and
  ``cfg.image_std``; one-channel maps are repeated to three channels;
- the product cutout is composited on white before encoding, like the white-background product shots of RF1M.

``to_tensor`` converts (B, H, W, C) uint8 numpy arrays (what datasets and the engine hold) to that layout.

The size and the statistics follow the loaded model (``resolve_inputs``): what the config sets, else what the
image encoder folder's ``preprocessor_config.json`` says (a transformers image processor's ``size`` or
``crop_size``, ``image_mean``, ``image_std``; ``microsoft/resnet-50``'s is 224 px with ImageNet statistics),
else ImageNet statistics. ``rfnet.build`` resolves them once and the checkpoint stores the result, so the batch
scorer, the online scorer and the RFFT reward, which all get this module's ``Preprocess`` from ``rfnet.load``,
normalise exactly as training did.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from rfnet.config import RFNetConfig

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
"""ImageNet statistics: the normalisation when neither the config nor the image encoder folder gives one."""
PRODUCT_BACKGROUND = 1.0  # white
PROCESSOR_CONFIG = "preprocessor_config.json"


def _processor_side(path: str, p: dict) -> int | None:
    """The square input side a transformers image processor config gives, or None if it gives none."""
    for key in ("crop_size", "size"):  # a processor that crops feeds the model the crop
        value = p.get(key) if key == "size" or p.get("do_center_crop", True) else None
        if isinstance(value, int):
            return value
        if isinstance(value, dict) and "height" in value:
            if value["height"] != value.get("width", value["height"]):
                raise ValueError(f"{path}: {key} {value} is not square; RFNet's inputs are")
            return int(value["height"])
        if isinstance(value, dict) and "shortest_edge" in value:
            return int(value["shortest_edge"])
    return None


def resolve_inputs(cfg: RFNetConfig) -> RFNetConfig:
    """``cfg`` with ``image_size``, ``image_mean`` and ``image_std`` made concrete (see the module docstring).

    Raises:
        ValueError: the folder's processor config cannot be followed (not square, not [0, 1] inputs), or
            ``image_size`` is ``None`` and the folder gives no size; the file is named.
    """
    p, path = {}, None
    if cfg.image_encoder_path:
        path = os.path.join(cfg.image_encoder_path, PROCESSOR_CONFIG)
        if os.path.isfile(path):
            with open(path) as f:
                p = json.load(f)
            if not p.get("do_rescale", True) or abs(p.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
                raise ValueError(f"{path}: the model expects inputs rescaled by {p.get('rescale_factor')}; "
                                 "RFNet supports images rescaled to [0, 1] (1/255)")  # fmt: skip
    normalize = p.get("do_normalize", True)
    mean = cfg.image_mean or (tuple(p.get("image_mean", IMAGE_MEAN)) if normalize else (0.0, 0.0, 0.0))
    std = cfg.image_std or (tuple(p.get("image_std", IMAGE_STD)) if normalize else (1.0, 1.0, 1.0))
    size = cfg.image_size
    if size is None:
        size = _processor_side(path, p) if p else None
        if size is None:
            raise ValueError(
                f"{path}: no input size there (size or crop_size); set image_size (--image-size) for this encoder"
            )
    return cfg.replace(image_size=size, image_mean=mean, image_std=std)


def to_tensor(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, C) or (B, H, W) uint8 -> (B, C, H, W) float32 in [0, 1] on ``device``."""
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {array.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    if t.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) images, got shape {tuple(array.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B, C, H, W) to (B, C, size, size); differentiable, a no-op when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> ``(x - mean) / std`` per channel."""
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


class Preprocess:
    """The callable ``rfnet.load`` returns next to the model; its outputs are RFNet's ``forward`` kwargs.

    Raises:
        ValueError: ``cfg``'s inputs are not resolved (``resolve_inputs``).
    """

    def __init__(self, cfg: RFNetConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        if cfg.image_size is None or cfg.image_mean is None or cfg.image_std is None:
            raise ValueError("Preprocess needs a config whose inputs are resolved (rfnet.preprocess.resolve_inputs)")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.size, self.mean, self.std = cfg.image_size, cfg.image_mean, cfg.image_std

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """Generated image (B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised."""
        return normalize(resize(images, self.size).clamp(0, 1), self.mean, self.std)

    def product(self, rgba: torch.Tensor) -> torch.Tensor:
        """Product cutout (B, 4, H, W) in [0, 1] -> composited on white, (B, 3, S, S) normalised."""
        if rgba.shape[1] != 4:
            raise ValueError(f"product cutouts must be RGBA (B, 4, H, W), got {tuple(rgba.shape)}")
        # Resize premultiplied colour and alpha separately so the edge does not bleed the background colour.
        alpha = resize(rgba[:, 3:4], self.size).clamp(0, 1)
        premult = resize(rgba[:, :3] * rgba[:, 3:4], self.size)
        return normalize((premult + (1 - alpha) * PRODUCT_BACKGROUND).clamp(0, 1), self.mean, self.std)

    def map(self, m: torch.Tensor) -> torch.Tensor:
        """Depth or saliency map (B, 1, H, W) in [0, 1] -> (B, 3, S, S) normalised."""
        if m.shape[1] != 1:
            m = m.mean(dim=1, keepdim=True)
        return normalize(resize(m, self.size).clamp(0, 1).expand(-1, 3, -1, -1), self.mean, self.std)

    def text(self, captions: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids`` and ``attention_mask``, (B, T) int64, T = ``cfg.max_caption_tokens``."""
        enc = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.cfg.max_caption_tokens,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def __call__(
        self,
        *,
        product_rgba: torch.Tensor | None = None,
        generated: torch.Tensor | None = None,
        depth: torch.Tensor | None = None,
        saliency: torch.Tensor | None = None,
        captions: list[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Preprocess whichever inputs the config enables (others may be ``None``) into ``RFNet.forward`` kwargs.

        Raises:
            ValueError: an enabled modality was not given.
        """
        given = {"product": product_rgba, "generated": generated, "depth": depth, "saliency": saliency}
        fns = {"product": self.product, "generated": self.image, "depth": self.map, "saliency": self.map}
        out: dict[str, torch.Tensor] = {}
        for name in self.cfg.image_modalities:
            if given[name] is None:
                raise ValueError(f"modality {name!r} is enabled in the RFNet config but was not given")
            out[name] = fns[name](given[name])
        if "caption" in self.cfg.modalities:
            if captions is None:
                raise ValueError("modality 'caption' is enabled in the RFNet config but no captions were given")
            device = next(iter(out.values())).device
            out.update(self.text(captions, device))
        return out
