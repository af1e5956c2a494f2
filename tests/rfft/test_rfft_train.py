"""The RFFT recipe: what trains, what does not, the loss falls, and the job's artifacts and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.config import GeneratorConfig
from engine.models import build_pipeline
from engine.prepare import PromptPolicy, stack_rows
from engine.samples import SAMPLES_DIR
from rfft import rewards
from rfft.config import RFFTConfig
from rfft.evaluate import condition_rows, load_products
from rfft.train import _fingerprint, train_step

SIZE, STEPS = 32, 3


def _setup(regulariser="cc"):
    cfg = RFFTConfig(
        generator=GeneratorConfig(base_model="tiny", size=SIZE, steps=STEPS, device="cpu"),
        grad_window=2,
        regulariser=regulariser,
        beta=1.0,
        reward="brightness",
    )
    pipe = build_pipeline(cfg.generator)
    for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False).eval()
    controlnet = pipe.controlnet.train().requires_grad_(True)
    reference = build_pipeline(cfg.generator).controlnet.requires_grad_(False).eval()
    products = load_products(str(SAMPLES_DIR), limit=2)
    batch = stack_rows(condition_rows(products, SIZE, 1, PromptPolicy()))
    return cfg, pipe, controlnet, reference, batch


def _optimise(cfg, pipe, controlnet, reference, reward_fn, batch, n_steps, lr):
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=0.0)
    history = []
    for _ in range(n_steps):
        loss, parts = train_step(pipe, controlnet, reference, reward_fn, batch, cfg, STEPS - 1, [11, 12])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(parts)
    return history


def test_only_the_controlnet_trains():
    cfg, pipe, controlnet, reference, batch = _setup("cc")
    reward = rewards.RFNetReward("tiny", "cpu")  # a real (tiny) RFNet, so its weights are checked too
    before = {k: v.clone() for k, v in controlnet.state_dict().items()}
    frozen = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "rfnet": reward.scorer.model}
    frozen_before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in frozen.items()}
    ref_before = {k: v.clone() for k, v in reference.state_dict().items()}
    # three steps: zero-initialised convs (outputs, then the condition embedding's last) must move before
    # anything upstream of them gets a gradient
    _optimise(cfg, pipe, controlnet, reference, reward, batch, n_steps=3, lr=1e-3)
    unchanged = [k for k, v in controlnet.state_dict().items() if torch.equal(v, before[k])]
    assert not unchanged, f"ControlNet parameters that did not change: {unchanged[:5]}"
    for name, module in frozen.items():
        moved = [k for k, v in module.state_dict().items() if not torch.equal(v, frozen_before[name][k])]
        assert not moved, f"{name} changed: {moved[:5]}"
        assert all(p.grad is None for p in module.parameters()), name
    assert all(torch.equal(v, ref_before[k]) for k, v in reference.state_dict().items())
    assert all(p.dtype == torch.float32 for p in controlnet.parameters())


def test_fingerprint_detects_a_change():
    m = torch.nn.Linear(3, 2)
    fp = _fingerprint({"m": m})
    with torch.no_grad():
        m.weight[0, 0] += 1e-3
    assert _fingerprint({"m": m}) != fp


def test_brightness_reward_loss_falls():
    cfg, pipe, controlnet, reference, batch = _setup("none")
    history = _optimise(cfg, pipe, controlnet, None, rewards.brightness, batch, n_steps=6, lr=3e-3)
    losses = [h["feedback"] for h in history]
    assert losses[-1] < losses[0] - 1e-3, losses


def test_config_validation():
    with pytest.raises(ValueError, match="regulariser"):
        RFFTConfig(regulariser="l1")
    with pytest.raises(ValueError, match="grad_window"):
        RFFTConfig(generator=GeneratorConfig(steps=4), grad_window=5)
    with pytest.raises(ValueError, match="x0 prediction"):
        RFFTConfig(generator=GeneratorConfig(steps=10, scheduler="dpmpp_sde_karras"))
    with pytest.raises(ValueError, match="unknown"):
        RFFTConfig.from_dict({"learning_rate": 1})
    ds = RFFTConfig(strategy="deepspeed", zero_stage=3, deepspeed_extra={"zero_optimization": {"overlap_comm": False}})
    assert ds.deepspeed_config()["zero_optimization"] == {"stage": 3, "overlap_comm": False}


def _products(tmp_path: Path) -> tuple[str, str]:
    train, held_out = tmp_path / "train", tmp_path / "held_out"
    train.mkdir()
    held_out.mkdir()
    for name in ("bottle-001.png", "mug-002.png", "lamp-003.png", "chair-004.png"):
        shutil.copy(SAMPLES_DIR / name, train / name)
    for name in ("speaker-005.png", "vase-006.png"):
        shutil.copy(SAMPLES_DIR / name, held_out / name)
    return str(train), str(held_out)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("deepspeed", marks=pytest.mark.slow)])
def test_train_rfft_job_writes_a_controlnet_the_engine_loads_and_resumes(tmp_path, ray_local, strategy):
    from jobs import train_rfft

    train, held_out = _products(tmp_path)
    out = tmp_path / "out"
    common = [
        "--train-products", train, "--eval-products", held_out, "--output", str(out),
        "--size", str(SIZE), "--steps", str(STEPS), "--workers", "2", "--regulariser", "cc",
        "--strategy", strategy, "--set", "grad_accum=2", "--set", "batch_size=1", "--set", "lr=1e-3",
        "--set", "weight_decay=0", "--set", "eval_seeds=2", "--set", "checkpoint_every=1",
    ]  # fmt: skip
    assert train_rfft.main([*common, "--max-steps", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["frozen_changed"] == ""
    assert summary["before"]["step"] == 0 and summary["after"]["step"] == 2
    for key in ("available_rate", "expected_attempts", "diversity", "background_std", "mean_p_available"):
        assert key in summary["after"]
    assert [r["step"] for r in _lines(out / "train.jsonl")] == [1, 2]

    # running again with the same output resumes from step 2 instead of starting over
    assert train_rfft.main([*common, "--max-steps", "3"]) == 0
    assert [r["step"] for r in _lines(out / "train.jsonl")] == [1, 2, 3]
    evals = [r["step"] for r in _lines(out / "eval.jsonl")]
    assert evals.count(0) == 1 and evals[-1] == 3

    # the result is a diffusers ControlNet folder the engine's factory loads unchanged, and after three steps
    # (zero-initialised convs have to move first) every weight has moved
    tuned = build_pipeline(GeneratorConfig(base_model="tiny", controlnet=str(out / "controlnet"), size=SIZE))
    start = build_pipeline(GeneratorConfig(base_model="tiny", size=SIZE)).controlnet.state_dict()
    unchanged = [k for k, v in tuned.controlnet.state_dict().items() if torch.equal(v, start[k])]
    assert not unchanged, unchanged[:5]


def test_train_rfft_checks_model_paths_and_passes_them_on_absolute(tmp_path, monkeypatch):
    """Ray Train's workers do not run in the job's directory, so a relative path must reach them absolute;
    a wrong path fails before Ray starts, named."""
    from jobs import train_rfft
    from rfnet.checkpoint import build, save
    from rfnet.config import preset

    save(build(preset("tiny"))[0], str(tmp_path / "judge"))
    monkeypatch.chdir(tmp_path)
    argv = ["--train-products", "products", "--output", "out"]
    cfg = train_rfft.build_config(train_rfft.parse_args([*argv, "--rfnet", "judge"]))
    assert cfg.rfnet_checkpoint == str(tmp_path / "judge") and cfg.depth == "tiny"
    with pytest.raises(SystemExit, match="RFNet checkpoint 'nowhere'"):
        train_rfft.main([*argv, "--rfnet", "nowhere"])
    with pytest.raises(SystemExit, match="ControlNet folder not found: nowhere"):
        train_rfft.main([*argv, "--controlnet", "nowhere"])
