"""Rewards for RFFT: functions ``reward_fn(images, cond) -> (B,)`` passed into the training recipe.

``images`` are (B, 3, H, W) float in [0, 1] with gradients (the graded step's decoded x0, product pasted
back); ``cond`` is a dict with ``product`` (B, 4, H, W) float in [0, 1] (the laid-out RGBA cutout) and
``captions`` (B strings). Higher is better; the recipe minimises ``-mean(reward)``.

Factories take the device so the recipe can build the reward on each Ray Train worker (models are
built where they run, never pickled across processes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rfft.losses import available_log_prob
from rfnet.config import DEFAULT_PRESET

RewardFn = Callable[[torch.Tensor, dict], torch.Tensor]


def brightness(images: torch.Tensor, cond: dict) -> torch.Tensor:
    """A toy differentiable reward: mean brightness of each image (for tests and smoke runs)."""
    return images.float().mean(dim=(1, 2, 3))


def brightness_factory(device: torch.device) -> RewardFn:
    return brightness


class RFNetReward:
    """``log P(Available)`` from a frozen RFNet, through RFNet's shared preprocessing.

    Depth and saliency are recomputed from the decoded image by RFNet's own (frozen, no-grad) estimators,
    so the gradient reaches the image only through RFNet's generated-image branch (docs/paper.md
    §8, Q7).
    """

    def __init__(
        self, checkpoint: str, device: torch.device | str, depth: str = DEFAULT_PRESET, saliency: str = DEFAULT_PRESET
    ):
        from rfnet import Scorer

        self.scorer = Scorer(checkpoint=checkpoint, device=str(device), depth=depth, saliency=saliency)
        self.scorer.model.eval().requires_grad_(False)

    def logits(self, images: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.scorer.logits(cond["product"], images, list(cond["captions"]))

    def __call__(self, images: torch.Tensor, cond: dict) -> torch.Tensor:
        return available_log_prob(self.logits(images, cond))

    def parameters(self):
        return self.scorer.model.parameters()


def rfnet_factory(
    checkpoint: str, depth: str = DEFAULT_PRESET, saliency: str = DEFAULT_PRESET
) -> Callable[[torch.device], RewardFn]:
    """A picklable factory: ``rfnet_factory(ckpt)(device)`` builds an :class:`RFNetReward` on ``device``."""

    def make(device: torch.device) -> RewardFn:
        return RFNetReward(checkpoint, device, depth=depth, saliency=saliency)

    return make
