"""Exact values of RFFT's losses on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rfft import losses, rewards


def _t(values):
    return torch.tensor(values, dtype=torch.float32).view(1, len(values), 1, 1)


def test_feedback_loss_is_cross_entropy_to_available():
    # rows: P(Available) = 1/4 and 3/4 (two classes, logits log 1 / log 3)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    reward = losses.available_log_prob(logits)
    torch.testing.assert_close(reward, torch.tensor([math.log(0.25), math.log(0.75)]))
    expected = (math.log(4.0) + math.log(4.0 / 3.0)) / 2
    assert losses.feedback_loss(reward).item() == pytest.approx(expected, rel=1e-6)
    # and it equals torch's cross-entropy against the one-hot "Available" target
    ce = torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    assert losses.feedback_loss(reward).item() == pytest.approx(ce.item(), rel=1e-6)


def test_available_is_index_zero_of_rfnet_labels():
    from rfnet import LABELS

    assert LABELS[losses.AVAILABLE] == "Available"


def test_consistent_condition_exact_value_and_gradient():
    uncond, text = _t([1.0, 2.0]).requires_grad_(), _t([3.0, 5.0]).requires_grad_()
    ref_uncond, ref_text = _t([0.0, 0.0]), _t([1.0, 1.0])
    # gaps (2, 3) vs (1, 1): squared differences (1, 4), mean 2.5
    loss = losses.consistent_condition_loss(uncond, text, ref_uncond, ref_text)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    # d/d text = 2 * (gap - ref_gap) / N = (1, 2); d/d uncond is its negative
    torch.testing.assert_close(text.grad, _t([1.0, 2.0]))
    torch.testing.assert_close(uncond.grad, _t([-1.0, -2.0]))


def test_consistent_condition_ignores_a_shift_common_to_both_halves():
    # CC constrains only the text direction: moving both halves together costs nothing (KL does pay for it)
    uncond, text = _t([1.0, 2.0]), _t([3.0, 5.0])
    shift = _t([7.0, -4.0])
    cc = losses.consistent_condition_loss(uncond + shift, text + shift, uncond, text)
    kl = losses.kl_loss(uncond + shift, text + shift, uncond, text)
    assert cc.item() == 0.0
    assert kl.item() == pytest.approx((49 + 16 + 49 + 16) / 4)


def test_kl_exact_value_covers_both_halves():
    uncond, text = _t([1.0, 2.0]).requires_grad_(), _t([3.0, 5.0]).requires_grad_()
    # squared distances: uncond (1, 4), text (4, 16); mean over the four elements 6.25
    loss = losses.kl_loss(uncond, text, _t([0.0, 0.0]), _t([1.0, 1.0]))
    assert loss.item() == pytest.approx(6.25)
    loss.backward()
    torch.testing.assert_close(text.grad, _t([1.0, 2.0]))  # 2 * (4, 16) ** 0.5 / 4
    torch.testing.assert_close(uncond.grad, _t([0.5, 1.0]))


def test_total_loss_combines_feedback_and_weighted_regulariser():
    reward = torch.tensor([math.log(0.25), math.log(0.75)])
    uncond, text, ref_uncond, ref_text = _t([1.0, 2.0]), _t([3.0, 5.0]), _t([0.0, 0.0]), _t([1.0, 1.0])
    feedback = (math.log(4.0) + math.log(4.0 / 3.0)) / 2
    for name, reg in (("cc", 2.5), ("kl", 6.25), ("none", 0.0)):
        loss, parts = losses.total_loss(reward, name, 0.5, uncond, text, ref_uncond, ref_text, feedback_scale=2.0)
        assert loss.item() == pytest.approx(2.0 * feedback + 0.5 * reg, rel=1e-6), name
        assert parts["regulariser"] == pytest.approx(reg)
    with pytest.raises(ValueError, match="unknown regulariser"):
        losses.total_loss(reward, "l2", 0.5, uncond, text)


def test_brightness_reward():
    images = torch.zeros(2, 3, 4, 4)
    images[1] = 0.5
    torch.testing.assert_close(rewards.brightness(images, {}), torch.tensor([0.0, 0.5]))


def test_rfnet_reward_is_log_p_available_and_differentiable():
    reward = rewards.rfnet_factory("tiny")(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g).requires_grad_()
    cond = {"product": torch.rand(2, 4, 64, 64, generator=g), "captions": ["a mug", "a lamp"]}
    r = reward(images, cond)
    probs = torch.softmax(reward.logits(images, cond), dim=-1)[:, 0]
    torch.testing.assert_close(r.exp(), probs)
    # the Scorer's numpy path gives the same P(Available) for the same (uint8) inputs
    u8 = (images.detach() * 255).round() / 255
    scored = reward.scorer.score(
        (cond["product"].permute(0, 2, 3, 1) * 255).round().byte().numpy(),
        (u8.permute(0, 2, 3, 1) * 255).round().byte().numpy(),
        cond["captions"],
    )
    cond_u8 = {**cond, "product": (cond["product"] * 255).round() / 255}
    torch.testing.assert_close(torch.from_numpy(scored.p_available), reward(u8, cond_u8).exp(), atol=1e-5, rtol=1e-4)
    r.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters())
