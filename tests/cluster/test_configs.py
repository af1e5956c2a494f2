"""``cluster.configs.from_dict``: the one way every package builds a typed config from plain data."""

from __future__ import annotations

import pytest

from cluster.configs import from_dict
from engine.config import GeneratorConfig
from rfft.config import RFFTConfig
from rfnet.config import RFNetConfig
from rfnet.train import TrainConfig


@pytest.mark.parametrize(
    "cls, data",
    [
        (RFNetConfig, {"width": 64, "colour": "red"}),
        (RFFTConfig, {"beta": 2.0, "learning_rate": 1}),
        (RFFTConfig, {"generator": {"size": 64, "stepz": 4}}),  # nested: refused too
        (TrainConfig, {"data": "d", "output": "o", "epoch": 3}),
        (TrainConfig, {"data": "d", "output": "o", "model": {"width": 64, "depthz": 2}}),
    ],
)
def test_unknown_keys_are_refused_at_every_level_by_name(cls, data):
    with pytest.raises(ValueError, match=r"unknown \w+ fields \['(colour|learning_rate|stepz|epoch|depthz)'\]"):
        cls.from_dict(data)


def test_nested_configs_are_built_and_round_trip():
    cfg = RFFTConfig.from_dict({"generator": {"size": 64, "steps": 4}, "grad_window": 2, "beta": 3.0})
    assert isinstance(cfg.generator, GeneratorConfig) and cfg.generator.steps == 4
    assert RFFTConfig.from_dict(cfg.to_dict()) == cfg
    train = TrainConfig(data="d", output="o")
    assert TrainConfig.from_dict(train.to_dict()) == train
    assert RFNetConfig.from_dict(RFNetConfig().to_dict()) == RFNetConfig()


def test_not_a_mapping_is_refused():
    with pytest.raises(ValueError, match="expected a mapping"):
        from_dict(RFNetConfig, ["width", 64])
