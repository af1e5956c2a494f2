"""The toy depth and saliency models: ``adloop train-maps`` for a few steps, the shipped ``toy`` weights
(which are only loaded here, never trained), and the errors for bad training sets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

import jobs.train_maps
from rfnet.config import MAP_PRESET_NAMES, PRESET_NAMES, TOY_ASSETS, TRAINED_RFNETS
from rfnet.depth import load_depth
from rfnet.maps_train import depth_rmse, evaluate_maps, render_set, saliency_f_measure
from rfnet.saliency import load_saliency
from rfnet.synth import generate_rf1m


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("maps") / "synth")
    generate_rf1m(out, 24, seed=7, size=32)
    return out


@pytest.fixture(scope="module")
def fresh_renders():
    # Seed 11: neither the shipped models' training set (seed 1) nor their held-out set (seed 2).
    return render_set(24, seed=11, size=128)


def test_train_maps_job_writes_loadable_models(ray_local, small_set, tmp_path, capsys):
    out = str(tmp_path / "maps")
    args = ["--data", small_set, "--out", out, "--depth-arch", "tiny", "--saliency-arch", "tiny",
            "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--max-steps-per-epoch", "2",
            "--workers", "2", "--eval-images", "4", "--eval-seed", "99"]  # fmt: skip
    assert jobs.train_maps.main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert all(np.isfinite(h["depth_loss"]) and np.isfinite(h["saliency_loss"]) for h in metrics["history"])
    assert printed["eval"] == metrics["eval"] and {"depth_rmse", "saliency_f"} <= set(metrics["eval"])
    options = yaml.safe_load(open(os.path.join(out, "config.yaml")))  # the job's options, to repeat the run
    assert (options["image_size"], options["depth_arch"], options["lr"]) == (32, "tiny", None)
    recipe = json.load(open(os.path.join(out, "train_config.json")))  # the recipe's defaults filled in
    assert (recipe["image_size"], recipe["lr"], recipe["depth_model"]["hidden_size"]) == (32, 2e-3, 32)

    depth, saliency = load_depth(os.path.join(out, "depth")), load_saliency(os.path.join(out, "saliency"))
    assert depth.input_size == 32 and depth.minmax is False  # declared in the folder's preprocessor_config.json
    assert saliency.model.cfg.minmax is False
    images = torch.rand(2, 3, 48, 40)
    for est in (depth, saliency):
        maps = est(images)
        assert maps.shape == (2, 1, 48, 40) and 0 <= maps.min() and maps.max() <= 1 and not maps.requires_grad


def test_shipped_toy_models_are_small_and_beat_the_random_tiny_ones(fresh_renders):
    size = sum(os.path.getsize(os.path.join(TOY_ASSETS, m, "model.safetensors")) for m in ("depth", "saliency"))
    assert size <= 3 * 2**20
    toy = evaluate_maps(load_depth("toy"), load_saliency("toy"), fresh_renders)
    tiny = evaluate_maps(load_depth("tiny"), load_saliency("tiny"), fresh_renders)
    # Honest margins: the shipped models meet their held-out targets (RMSE 0.10, F 0.85) with room to spare on
    # fresh scenes, and the random ones are far from them.
    assert toy["depth_rmse"] < 0.12 and toy["depth_rmse"] < 0.5 * tiny["depth_rmse"]
    assert toy["saliency_f"] > 0.8 and toy["saliency_f"] > tiny["saliency_f"] + 0.2
    assert toy["saliency_mae"] < 0.5 * tiny["saliency_mae"]


def test_toy_names_a_map_preset_and_a_trained_rfnet():
    from engine.models import ModelPathError
    from engine.score import checked_scorer_paths
    from rfnet.train import TrainConfig, absolute_local_paths

    # For RFNet, toy is a shipped trained checkpoint (TRAINED_RFNETS), not an architecture preset.
    assert "toy" in MAP_PRESET_NAMES and "toy" not in PRESET_NAMES and "toy" in TRAINED_RFNETS
    assert checked_scorer_paths("toy", "toy", "toy") == ("toy", "toy", "toy")
    with pytest.raises(ModelPathError, match="toyish"):
        checked_scorer_paths("toyish", "tiny", "tiny")
    cfg = absolute_local_paths(TrainConfig(data="d", output="o", maps="compute", depth="toy", saliency="toy"))
    assert (cfg.depth, cfg.saliency) == ("toy", "toy")


def test_metrics_on_known_maps():
    truth = np.zeros((1, 10, 10), np.float32)
    truth[0, :5] = 1.0
    assert depth_rmse(truth, truth) == 0.0 and depth_rmse(truth + 0.1, truth) == pytest.approx(0.1, abs=1e-6)
    assert saliency_f_measure(truth, truth) == (pytest.approx(1.0), 0)
    assert saliency_f_measure(1.0 - truth, truth)[0] == 0.0
    assert saliency_f_measure(np.zeros_like(truth), np.zeros_like(truth)) == (0.0, 1)  # no salient truth: left out


def _fail_if_ray_starts(monkeypatch):
    import cluster.runtime

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started for a bad training set")

    monkeypatch.setattr(cluster.runtime, "init_ray", no_ray)


def test_bad_training_sets_fail_before_ray_naming_the_set(small_set, tmp_path, monkeypatch, capsys):
    import shutil

    _fail_if_ray_starts(monkeypatch)

    def run(data: str) -> str:
        assert jobs.train_maps.main(["--data", data, "--out", str(tmp_path / "out")]) == 2
        return capsys.readouterr().err

    missing = str(tmp_path / "nowhere")
    assert missing in run(missing) and "label.txt" in run(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "label.txt").write_text("")
    err = run(str(empty))
    assert str(empty) in err and "no examples" in err

    no_maps = str(tmp_path / "no_maps")
    shutil.copytree(small_set, no_maps)
    shutil.rmtree(os.path.join(no_maps, "depth"))
    err = run(no_maps)
    assert no_maps in err and "no depth and/or saliency map" in err

    broken = str(tmp_path / "broken")
    shutil.copytree(small_set, broken)
    name = sorted(os.listdir(os.path.join(broken, "saliency")))[0]
    with open(os.path.join(broken, "saliency", name), "wb") as f:
        f.write(b"not a png")
    err = run(broken)
    assert broken in err and os.path.join("saliency", name) in err and "unreadable" in err
