"""The ``paper`` saliency model is U^2-Net: state dicts with the official key names and shapes of ``u2net.pth`` and
``u2netp.pth`` (random values) load with every tensor, and a file that does not fit fails at once, naming itself
and the keys.

The expected layout is written out here from the authors' released model code (``REBNCONV`` = ``conv_s1`` +
``bn_s1``; ``RSU7(in_ch, mid_ch, out_ch)`` ... ``RSU4F``; ``U2NET`` / ``U2NETP`` with ``stage1`` ... ``stage1d``,
``side1`` ... ``side6``, ``outconv``), not derived from ``rfnet.u2net``, so the two are checked against each other.
"""

from __future__ import annotations

import pytest
import torch

import rfnet
from rfnet.saliency import SaliencyEstimator
from rfnet.u2net import U2Net
from rfnet.weights import PretrainedWeightsError

# (name, RSU height, in, mid, out) as the official U2NET / U2NETP constructors call them; RSU4F is height 4.
OFFICIAL = {
    "full": [("stage1", 7, 3, 32, 64), ("stage2", 6, 64, 32, 128), ("stage3", 5, 128, 64, 256),
             ("stage4", 4, 256, 128, 512), ("stage5", 4, 512, 256, 512), ("stage6", 4, 512, 256, 512),
             ("stage5d", 4, 1024, 256, 512), ("stage4d", 4, 1024, 128, 256), ("stage3d", 5, 512, 64, 128),
             ("stage2d", 6, 256, 32, 64), ("stage1d", 7, 128, 16, 64)],
    "small": [("stage1", 7, 3, 16, 64), ("stage2", 6, 64, 16, 64), ("stage3", 5, 64, 16, 64),
              ("stage4", 4, 64, 16, 64), ("stage5", 4, 64, 16, 64), ("stage6", 4, 64, 16, 64),
              ("stage5d", 4, 128, 16, 64), ("stage4d", 4, 128, 16, 64), ("stage3d", 5, 128, 16, 64),
              ("stage2d", 6, 128, 16, 64), ("stage1d", 7, 128, 16, 64)],
}  # fmt: skip
SIDES = {"full": (64, 64, 128, 256, 512, 512), "small": (64,) * 6}


def official_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def rebnconv(prefix: str, cin: int, cout: int) -> None:
        shapes.update({f"{prefix}.conv_s1.weight": (cout, cin, 3, 3), f"{prefix}.conv_s1.bias": (cout,)})
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn_s1.{k}"] = (cout,)
        shapes[f"{prefix}.bn_s1.num_batches_tracked"] = ()

    for name, height, cin, mid, out in OFFICIAL[variant]:
        rebnconv(f"{name}.rebnconvin", cin, out)
        rebnconv(f"{name}.rebnconv1", out, mid)
        for i in range(2, height + 1):
            rebnconv(f"{name}.rebnconv{i}", mid, mid)
        for i in range(height - 1, 1, -1):
            rebnconv(f"{name}.rebnconv{i}d", 2 * mid, mid)
        rebnconv(f"{name}.rebnconv1d", 2 * mid, out)
    for i, c in enumerate(SIDES[variant], 1):
        shapes.update({f"side{i}.weight": (1, c, 3, 3), f"side{i}.bias": (1,)})
    return shapes | {"outconv.weight": (1, 6, 1, 1), "outconv.bias": (1,)}


def official_state(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in official_shapes(variant).items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.05
    return state


def test_published_sizes():
    # The paper gives 44.0 M parameters for U^2-Net (176.3 MB) and 1.13 M for U^2-Net-small (4.7 MB).
    for variant, millions in (("full", 44.0), ("small", 1.13)):
        shapes = official_shapes(variant)
        params = sum(
            torch.Size(s).numel() for k, s in shapes.items() if not k.split(".")[-1].startswith(("running", "num"))
        )
        assert params / 1e6 == pytest.approx(millions, rel=0.005)
        with torch.device("meta"):  # shapes only, no memory
            model = {k: tuple(v.shape) for k, v in U2Net(variant).state_dict().items()}
        assert model == shapes


@pytest.mark.parametrize("variant,filename", [("full", "u2net.pth"), ("small", "u2netp.pth")])
def test_official_state_dict_loads_every_weight(tmp_path, variant, filename):
    state = official_state(variant)
    path = str(tmp_path / filename)
    torch.save(state, path)
    estimator = rfnet.load_saliency(path)
    loaded = estimator.model.state_dict()
    assert estimator.model.variant == variant and estimator.input_size == 320
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # nothing left at its random init
    from engine.score import checked_scorer_paths  # what refresh, serve and train-rfft check a --saliency with

    assert checked_scorer_paths("tiny", "tiny", path)[2] == path
    if variant == "small":  # at 320 px even the small model is slow on a CPU; 72 x 56 (not multiples of 32) is not
        maps = SaliencyEstimator(estimator.model, input_size=72)(torch.rand(2, 3, 72, 56))
        assert maps.shape == (2, 1, 72, 56) and maps.amin() == 0 and maps.amax() == 1


def test_checkpoint_without_batchnorm_counters_loads(tmp_path):
    state = {k: v for k, v in official_state("small").items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "u2netp.pth")
    loaded = rfnet.load_saliency(str(tmp_path / "u2netp.pth")).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_weights_that_do_not_fit_fail_naming_the_file_and_keys(tmp_path):
    state = official_state("small")
    del state["stage3.rebnconv2d.conv_s1.weight"]
    state["stage7.rebnconvin.conv_s1.weight"] = torch.zeros(1)
    state["side1.weight"] = torch.zeros(1, 32, 3, 3)
    path = str(tmp_path / "u2netp.pth")
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError) as err:
        rfnet.load_saliency(path)
    message = str(err.value)
    assert message.startswith(f"{path}: the weights do not fit U^2-Net (small)")
    assert "1 missing [stage3.rebnconv2d.conv_s1.weight]" in message
    assert "1 unexpected [stage7.rebnconvin.conv_s1.weight]" in message
    assert "side1.weight: (1, 32, 3, 3) in the file, (1, 64, 3, 3) expected" in message

    torch.save({"model": state}, path)  # a training checkpoint wrapping the state dict is not one
    with pytest.raises(PretrainedWeightsError, match="not a state dict"):
        rfnet.load_saliency(path)
