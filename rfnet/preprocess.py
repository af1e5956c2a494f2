"""RFNet's input preprocessing, defined once for training, the batch scorer, the online scorer and RFFT.

Everything here is tensor in, tensor out, and differentiable (bilinear resizing with antialiasing, an
affine normalisation), so RFFT can backpropagate a reward through it into the generated image. The
normalisation constants live only in this module and travel with the model: ``rfnet.load`` returns the
``Preprocess`` that matches the checkpoint's config.

Conventions (for every function below):

- images are (B, 3, H, W) float in [0, 1]; product cutouts are (B, 4, H, W) float in [0, 1] (RGBA, alpha
  = product mask); depth and saliency maps are (B, 1, H, W) float in [0, 1]; any H, W;
- outputs are (B, 3, S, S) float, S = ``cfg.image_size``, normalised with ImageNet statistics (what the
  ResNet trunk's pretrained weights expect); one-channel maps are repeated to three channels;
- the product cutout is composited on white before encoding, like the white-background product shots of RF1M.

``to_tensor`` converts (B, H, W, C) uint8 numpy arrays (what datasets and the engine hold) to that layout.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from rfnet.config import RFNetConfig

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
PRODUCT_BACKGROUND = 1.0  # white


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


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> ImageNet-normalised."""
    mean = x.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Preprocess:
    """The callable ``rfnet.load`` returns next to the model; its outputs are RFNet's ``forward`` kwargs."""

    def __init__(self, cfg: RFNetConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.size = cfg.image_size

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """Generated image (B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised."""
        return normalize(resize(images, self.size).clamp(0, 1))

    def product(self, rgba: torch.Tensor) -> torch.Tensor:
        """Product cutout (B, 4, H, W) in [0, 1] -> composited on white, (B, 3, S, S) normalised."""
        if rgba.shape[1] != 4:
            raise ValueError(f"product cutouts must be RGBA (B, 4, H, W), got {tuple(rgba.shape)}")
        # Resize premultiplied colour and alpha separately so the edge does not bleed the background colour.
        alpha = resize(rgba[:, 3:4], self.size).clamp(0, 1)
        premult = resize(rgba[:, :3] * rgba[:, 3:4], self.size)
        return normalize((premult + (1 - alpha) * PRODUCT_BACKGROUND).clamp(0, 1))

    def map(self, m: torch.Tensor) -> torch.Tensor:
        """Depth or saliency map (B, 1, H, W) in [0, 1] -> (B, 3, S, S) normalised."""
        if m.shape[1] != 1:
            m = m.mean(dim=1, keepdim=True)
        return normalize(resize(m, self.size).clamp(0, 1).expand(-1, 3, -1, -1))

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
