"""``Scorer``: the Ray-free RFNet inference object behind the engine's scoring stage and the online scorer.

It loads a checkpoint, the depth model and the saliency model once, then for each batch computes depth
and saliency of the generated images on the fly and runs RFNet (the five inputs of docs/paper.md §3.1).
This module must not import ray (the layering test checks it), so a test can call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cluster.devices import resolve_device
from rfnet.checkpoint import load, model_id, threshold_of
from rfnet.config import DEFAULT_PRESET, LABELS
from rfnet.depth import load_depth
from rfnet.preprocess import to_tensor
from rfnet.saliency import load_saliency

DEFECTS: tuple[str, ...] = LABELS[1:]


@dataclass
class ScoreResult:
    """RFNet's verdict on a batch of B candidates."""

    p_available: np.ndarray
    """(B,) float32: P(Available)."""
    probabilities: np.ndarray
    """(B, 6) float32: softmax over ``LABELS`` (rows sum to 1)."""
    defect: list[str]
    """The most likely of the five defect classes, per row (reported even when the row is accepted)."""
    accepted: np.ndarray
    """(B,) bool: ``p_available >= threshold``."""


class Scorer:
    """Score generated ad images with RFNet.

    Args:
        checkpoint: ``"tiny"`` / ``"paper"`` (random weights) or an RFNet checkpoint folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (see ``cluster.devices.resolve_device``).
        threshold: decision threshold on P(Available); ``None`` uses the checkpoint's.
        depth: depth model, ``"tiny"`` / ``"paper"`` / ``"toy"`` / a local transformers folder.
        saliency: saliency model, ``"tiny"`` / ``"paper"`` / ``"toy"`` / U^2-Net's ``.pth`` / a folder from
            ``rfnet.saliency.save_saliency``.
    """

    def __init__(
        self,
        checkpoint: str = DEFAULT_PRESET,
        device: str = "auto",
        threshold: float | None = None,
        depth: str = DEFAULT_PRESET,
        saliency: str = DEFAULT_PRESET,
    ) -> None:
        self.device = resolve_device(device)
        self.model, self.preprocess = load(checkpoint, self.device)
        self.threshold = float(threshold_of(checkpoint) if threshold is None else threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        self.model_id = model_id(checkpoint)
        needs = set(self.model.cfg.modalities)
        self.depth = load_depth(depth, self.device) if "depth" in needs else None
        self.saliency = load_saliency(saliency, self.device) if "saliency" in needs else None

    def logits(self, product_rgba: torch.Tensor, generated: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Differentiable path (RFFT): (B, 4, H, W) and (B, 3, H, W) float in [0, 1] -> (B, 6) logits.

        Gradients flow into ``generated`` through preprocessing and RFNet; depth and saliency are detached.
        """
        maps = {}
        if self.depth is not None:
            maps["depth"] = self.depth(generated)
        if self.saliency is not None:
            maps["saliency"] = self.saliency(generated)
        batch = self.preprocess(product_rgba=product_rgba, generated=generated, captions=captions, **maps)
        return self.model(**batch)

    @torch.no_grad()
    def score(self, product_rgba: np.ndarray, generated: np.ndarray, captions: list[str]) -> ScoreResult:
        """Score a batch.

        Args:
            product_rgba: (B, H, W, 4) uint8 laid-out product cutouts (alpha = product mask).
            generated: (B, H, W, 3) uint8 generated ad images; any H, W (resized internally).
            captions: B product captions.

        Returns:
            A ``ScoreResult`` with B rows.

        Raises:
            ValueError: mismatched batch sizes or channel counts.
        """
        b = len(captions)
        if product_rgba.ndim != 4 or product_rgba.shape[-1] != 4:
            raise ValueError(f"product_rgba must be (B, H, W, 4) uint8, got {product_rgba.shape}")
        if generated.ndim != 4 or generated.shape[-1] != 3:
            raise ValueError(f"generated must be (B, H, W, 3) uint8, got {generated.shape}")
        if not (product_rgba.shape[0] == generated.shape[0] == b):
            raise ValueError(
                f"batch sizes differ: {product_rgba.shape[0]} products, {generated.shape[0]} images, {b} captions"
            )
        if b == 0:
            empty = np.zeros((0,), np.float32)
            return ScoreResult(empty, np.zeros((0, len(LABELS)), np.float32), [], np.zeros((0,), bool))
        logits = self.logits(to_tensor(product_rgba, self.device), to_tensor(generated, self.device), captions)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float32)
        p_avail = probs[:, 0].copy()
        defect = [DEFECTS[i] for i in probs[:, 1:].argmax(axis=1)]
        return ScoreResult(p_avail, probs, defect, p_avail >= self.threshold)
