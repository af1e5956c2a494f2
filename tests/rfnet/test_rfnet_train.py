"""RFNet training under Ray Train on CPU: 2-worker DDP and DeepSpeed runs on streamed splits, checkpoints, resume,
the job, and a cluster without a CPU for the decode tasks refused at once."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch

import rfnet
from rfnet.synth import generate_rf1m
from rfnet.train import TrainConfig, fit


@pytest.fixture
def own_ray():
    """No Ray up when the test starts, so ``fit`` starts its own, sized for 2 workers and the decode tasks (3 CPUs);
    stopped afterwards, so the next ``ray_local`` user gets its 2-CPU Ray back."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train") / "synth")
    generate_rf1m(out, 96, seed=0, size=32)
    return out


def _args(data: str, out: str, *extra: str) -> list[str]:
    return ["--data", data, "--out", out, "--image-size", "32", "--batch-size", "4", "--workers", "2",
            "--max-steps-per-epoch", "3", "--lr", "1e-3", *extra]  # fmt: skip


def _checkpoints(out: str) -> list[str]:
    """Ray Train checkpoint folders of the run (not its ``checkpoint_manager_snapshot.json``)."""
    return sorted(p for p in glob.glob(os.path.join(out, "ray", "rfnet", "checkpoint_*")) if os.path.isdir(p))


def _check_outputs(out: str, metrics: dict) -> None:
    on_disk = json.load(open(os.path.join(out, "metrics.json")))
    assert on_disk["test"] == metrics["test"]
    test = metrics["test"]
    for key in ("precision", "recall", "f1", "ap", "per_class_f1", "confusion_matrix"):
        assert key in test
    assert test["n"] == metrics["split_sizes"]["test"] > 0
    assert np.array(test["confusion_matrix"]).sum() == test["n"]
    assert set(test["per_class_f1"]) == set(rfnet.LABELS)
    assert metrics["train_samples_per_s"] > 0
    last = metrics["history"][-1]  # whether val precision reached the target is said, not hidden behind 0.5
    assert isinstance(last["threshold_calibrated"], bool) and (
        last["threshold_calibrated"] or last["threshold"] == 0.5
    )
    # the final folder is a checkpoint the scorer loads
    scorer = rfnet.Scorer(os.path.join(out, "rfnet"), device="cpu")
    assert scorer.preprocess.size == 32 and 0 <= scorer.threshold <= 1
    rng = np.random.default_rng(0)
    result = scorer.score(
        rng.integers(0, 256, (2, 32, 32, 4), dtype=np.uint8), rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
        ["a red mug, real size: small"] * 2,
    )  # fmt: skip
    assert result.probabilities.shape == (2, 6)


def test_ddp_two_workers_job_checkpoints_and_resumes(own_ray, data, tmp_path, capsys):
    import jobs.train_rfnet

    out = str(tmp_path / "ddp")
    assert jobs.train_rfnet.main(_args(data, out, "--strategy", "ddp", "--epochs", "1")) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    first = json.load(open(os.path.join(out, "metrics.json")))
    assert printed["ap"] == first["test"]["ap"]
    _check_outputs(out, first)
    assert first["start_epoch"] == 0 and first["epoch"] == 0
    # The splits stream from Parquet shards of example rows: every example once, in the split it was put in.
    import pyarrow.parquet as pq

    for split, n in first["split_sizes"].items():
        shards = glob.glob(os.path.join(out, "splits", split, "shard-*.parquet"))
        assert sum(pq.read_metadata(p).num_rows for p in shards) == n
    checkpoints = _checkpoints(out)
    assert len(checkpoints) == 1
    assert os.path.isfile(os.path.join(checkpoints[0], "train_state.pt"))
    assert os.path.isfile(os.path.join(checkpoints[0], "rfnet", "model.safetensors"))

    # Same output and name, more epochs: the run resumes after epoch 0 instead of starting over.
    assert jobs.train_rfnet.main(_args(data, out, "--strategy", "ddp", "--epochs", "2")) == 0
    second = json.load(open(os.path.join(out, "metrics.json")))
    assert second["start_epoch"] == 1 and second["epoch"] == 1
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    assert second["history"][0] == first["history"][0]  # carried over from the checkpoint, not retrained
    assert second["history"][1]["lr"] == pytest.approx(1e-4)  # the /10 drop at epochs // 2
    _check_outputs(out, second)


def test_init_from_starts_from_the_checkpoint_and_calibrates_its_own_threshold(ray_local, data, tmp_path):
    """``--init-from``: the checkpoint's architecture (``--preset``/``--image-size`` ignored) and weights, then
    this run's own threshold. With lr 0 AdamW moves no parameter, so they come out as the start's exactly (the
    trunk's BatchNorm statistics do follow the new data)."""
    from safetensors.torch import load_file

    import jobs.train_rfnet
    from rfnet.checkpoint import WEIGHTS_NAME, build, read_meta, save
    from rfnet.config import preset

    arch = preset("tiny").replace(image_size=32)
    start = str(tmp_path / "start")
    save(build(arch, seed=7)[0], start, threshold=0.77)
    out = str(tmp_path / "tuned")
    argv = ["--data", data, "--out", out, "--init-from", start, "--preset", "tiny", "--image-size", "64",
            "--lr", "0", "--epochs", "1", "--batch-size", "4", "--workers", "1", "--max-steps-per-epoch", "2"]  # fmt: skip
    assert jobs.train_rfnet.main(argv) == 0
    tuned = os.path.join(out, "rfnet")
    assert read_meta(tuned)["rfnet"]["image_size"] == 32
    before, after = load_file(os.path.join(start, WEIGHTS_NAME)), load_file(os.path.join(tuned, WEIGHTS_NAME))
    fresh = build(arch, seed=0)[0]  # what a random start would be
    params = [name for name, _ in fresh.named_parameters()]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in params)
    assert any(not torch.equal(fresh.state_dict()[k], before[k]) for k in params)
    last = json.load(open(os.path.join(out, "metrics.json")))["history"][-1]
    assert rfnet.Scorer(tuned, device="cpu").threshold == pytest.approx(last["threshold"])
    assert last["threshold"] != 0.77  # calibrated on this run's validation split, not the start's


def test_deepspeed_zero2_two_workers(own_ray, data, tmp_path):
    from jobs.train_rfnet import _parser, config_from_args

    args = _args(data, str(tmp_path / "ds"), "--strategy", "deepspeed", "--hflip")
    cfg = config_from_args(_parser().parse_args(args))
    assert cfg.hflip
    cfg.epochs, cfg.zero_stage = 1, 2
    metrics = fit(cfg)
    _check_outputs(cfg.output, metrics)
    (checkpoint,) = _checkpoints(cfg.output)
    # one ZeRO optimizer shard per worker, merged into one Ray Train checkpoint
    shards = glob.glob(os.path.join(checkpoint, "deepspeed", "last", "zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2


def test_mirroring_flips_all_images_of_an_example_together():
    from rfnet.train import mirror_some

    b, s = 64, 8
    images = {k: torch.rand(b, 3, s, s) for k in ("product", "generated", "depth", "saliency")}
    tokens = torch.randint(0, 100, (b, 12))
    out = mirror_some({**images, "input_ids": tokens}, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(out["generated"][i], images["generated"][i].flip(-1))) for i in range(b)]
    assert 0 < sum(flipped) < b  # some of the batch, not all or none
    for k, x in images.items():
        for i in range(b):
            assert torch.equal(out[k][i], x[i].flip(-1) if flipped[i] else x[i]), (k, i)
    assert torch.equal(out["input_ids"], tokens)


def test_the_stream_decodes_in_small_blocks_whatever_the_shard_count(ray_local, data, tmp_path):
    """Memory of the stream is set by its block size: many small shards must not be packed into one read task
    that decodes a whole split into one block (Ray 2.60's default Parquet reader does that), and the settings
    that prevent it stay with the training datasets, not with the process's other datasets."""
    from ray.data import DataContext

    from rfnet.data import read_rf1m, write_shards
    from rfnet.train import DECODED_BLOCK_ROWS, _datasets

    examples = read_rf1m(data)
    files = write_shards(examples, str(tmp_path / "train"), rows_per_shard=8, seed=0)
    before = DataContext.get_current()
    settings = before.use_datasource_v2, before.target_max_block_size, before.execution_options.resource_limits
    cfg = TrainConfig(data=[data], output=str(tmp_path / "out"), model=rfnet.RFNetConfig(image_size=32))
    ds = _datasets({"train": files}, cfg)["train"]

    after = DataContext.get_current()
    assert (after.use_datasource_v2, after.target_max_block_size, after.execution_options.resource_limits) == settings
    rows = [bundle.num_rows() for bundle in ds.iter_internal_ref_bundles()]
    assert sum(rows) == len(examples) == 96
    assert max(rows) <= DECODED_BLOCK_ROWS < len(examples)


def test_a_cluster_without_a_cpu_for_decoding_is_refused(ray_local, data, tmp_path, capsys):
    import jobs.train_rfnet

    assert (
        jobs.train_rfnet.main(_args(data, str(tmp_path / "o"))) == 2
    )  # ray_local has 2 CPUs, the 2 workers take them
    err = capsys.readouterr().err
    assert "the Ray cluster has 2 CPUs, training needs 3: 2 workers x 1 + data_cpus 1" in err


def test_bad_dataset_fails_before_training_with_names(data, tmp_path, capsys):
    import shutil

    import jobs.train_rfnet

    bad = str(tmp_path / "bad")
    shutil.copytree(data, bad)
    with open(os.path.join(bad, "label.txt"), "a") as f:
        f.write("p00000_00.png\tGlitch\n")
    assert jobs.train_rfnet.main(_args(bad, str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert "Glitch" in err and "p00000_00.png" in err


def test_train_config_validation(tmp_path):
    with pytest.raises(ValueError):
        TrainConfig(data="d", output="o", strategy="fsdp")
    with pytest.raises(ValueError):
        TrainConfig(data="d", output="o", zero_stage=3)
    with pytest.raises(ValueError):
        TrainConfig(data="d", output="o", dtype="fp16")
    cfg = TrainConfig(data="d", output="o", epochs=10)
    assert cfg.lr_drop_epoch == 5  # the paper: /10 at epoch 5 of 10
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_local_paths_reach_the_workers_absolute(tmp_path, monkeypatch):
    """Ray Train's workers run elsewhere: ``fit`` makes relative data and model folders absolute, keeps presets."""
    from jobs.train_rfnet import _parser, config_from_args
    from rfnet.train import absolute_local_paths

    (tmp_path / "synth").mkdir()
    (tmp_path / "resnet").mkdir()
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["--data", "synth", "--out", "o", "--image-encoder", "resnet", "--depth", "tiny"])
    cfg = absolute_local_paths(config_from_args(args))
    assert cfg.data == str(tmp_path / "synth") and cfg.model.image_encoder_path == str(tmp_path / "resnet")
    assert cfg.depth == "tiny" and cfg.saliency == "tiny"
