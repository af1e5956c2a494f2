"""RFFT's objective: the RFNet feedback loss plus a regulariser against a frozen reference ControlNet.

    F_total = F_AC + beta * R

- ``F_AC = -mean_i log P_RFNet(Available | x0_i, ...)`` (docs/paper.md §5.2): the cross-entropy of RFNet's
  softmax against the one-hot "Available" label, on the decoded x0 prediction of the graded step.
  In code it is ``-mean(reward)`` where the reward is ``log P(Available)`` (:mod:`rfft.rewards`), so any
  differentiable reward plugs in the same way.
- ``R`` is one of (``RFFTConfig.regulariser``):

  - ``"cc"``, the Consistent Condition (docs/paper.md §5.3, the author's code form): the element-wise
    mean of ``((eps_text - eps_uncond) - (ref_text - ref_uncond)) ** 2``, the gap classifier-free guidance
    reads off the two CFG halves, trainable minus frozen reference, at the same ``x_t``;
  - ``"kl"``, the DPOK-style bound on the KL to the reference, on both CFG halves: the element-wise mean
    of ``(eps_uncond - ref_uncond) ** 2`` and ``(eps_text - ref_text) ** 2``. DPOK bounds the conditional
    prediction only, but sampling uses ``uncond + w (text - uncond)``: with the unconditional half left
    free, a first benchmark run (text half only) drifted and lost diversity as fast as no regulariser
    (docs/benchmarks.md, "RFFT benchmarks"), so the distance covers both predictions the sampler uses;
  - ``"none"``: plain ReFL, which the paper reports collapses to bland backgrounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rfft.config import REGULARISERS

AVAILABLE = 0
"""Index of "Available" in ``rfnet.LABELS``."""


def available_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) RFNet logits -> (B,) ``log P(Available)`` (log-softmax, numerically stable)."""
    return F.log_softmax(logits.float(), dim=-1)[:, AVAILABLE]


def feedback_loss(reward: torch.Tensor) -> torch.Tensor:
    """``F_AC = -mean(reward)``; with ``reward = log P(Available)`` it is the cross-entropy to "Available"."""
    return -reward.float().mean()


def consistent_condition_loss(
    uncond: torch.Tensor, text: torch.Tensor, ref_uncond: torch.Tensor, ref_text: torch.Tensor
) -> torch.Tensor:
    """Mean over elements of ``((text - uncond) - (ref_text - ref_uncond)) ** 2`` (all (B, 4, h, w))."""
    gap = text.float() - uncond.float()
    ref_gap = (ref_text.float() - ref_uncond.float()).detach()
    return (gap - ref_gap).pow(2).mean()


def kl_loss(
    uncond: torch.Tensor, text: torch.Tensor, ref_uncond: torch.Tensor, ref_text: torch.Tensor
) -> torch.Tensor:
    """Mean over the elements of both CFG halves of ``(eps - ref_eps) ** 2``: the DPOK-style KL bound."""
    d_text = (text.float() - ref_text.float().detach()).pow(2)
    d_uncond = (uncond.float() - ref_uncond.float().detach()).pow(2)
    return torch.cat([d_uncond.flatten(), d_text.flatten()]).mean()


def regulariser_loss(
    name: str,
    uncond: torch.Tensor,
    text: torch.Tensor,
    ref_uncond: torch.Tensor | None,
    ref_text: torch.Tensor | None,
) -> torch.Tensor:
    """The regulariser ``name`` (one of :data:`REGULARISERS`); ``"none"`` is a zero that keeps the graph."""
    if name == "cc":
        return consistent_condition_loss(uncond, text, ref_uncond, ref_text)
    if name == "kl":
        return kl_loss(uncond, text, ref_uncond, ref_text)
    if name == "none":
        return text.float().sum() * 0.0
    raise ValueError(f"unknown regulariser {name!r}; expected one of {REGULARISERS}")


def total_loss(
    reward: torch.Tensor,
    regulariser: str,
    beta: float,
    uncond: torch.Tensor,
    text: torch.Tensor,
    ref_uncond: torch.Tensor | None = None,
    ref_text: torch.Tensor | None = None,
    feedback_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``feedback_scale * F_AC + beta * R``; returns the loss and its parts as floats for logging."""
    feedback = feedback_loss(reward)
    reg = regulariser_loss(regulariser, uncond, text, ref_uncond, ref_text)
    loss = feedback_scale * feedback + beta * reg
    return loss, {"loss": loss.item(), "feedback": feedback.item(), "regulariser": reg.item()}
