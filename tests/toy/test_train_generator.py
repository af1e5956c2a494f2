"""``adloop train-generator`` for a few steps per stage: Ray Train (2 DDP workers), every stage's output,
the assembled diffusers folder loading as a base model, resume, and bad input refused before Ray starts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

import jobs.train_generator
from engine.config import ConditioningConfig, GeneratorConfig
from engine.generate import GenerateStage
from engine.models import ModelPathError, build_pipeline
from engine.prepare import PromptPolicy, condition_row, stack_rows
from toy.scenes import write_scenes
from toy.train_generator import ARCH, new_components

SIZE = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gen") / "scenes")
    write_scenes(out, 16, seed=3, size=SIZE)
    return out


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    from cluster.runtime import init_ray

    init_ray(num_cpus=2, num_gpus=0)
    out = str(tmp_path_factory.mktemp("gen") / "run")
    argv = ["--data", scenes, "--output", out, "--vae-steps", "2", "--unet-steps", "2", "--controlnet-steps", "2",
            "--vae-batch-size", "2", "--vae-crop", "32", "--batch-size", "2", "--workers", "2", "--log-every", "1"]  # fmt: skip
    assert jobs.train_generator.main(argv) == 0
    return out, argv


def test_every_stage_trains_and_logs_its_curve(trained):
    out, _ = trained
    log = json.load(open(os.path.join(out, "train_log.json")))
    assert list(log["stages"]) == ["vae", "unet", "controlnet"]
    options = yaml.safe_load(open(os.path.join(out, "config.yaml")))  # the job's options, to repeat the run
    assert (options["vae_steps"], options["batch_size"], options["data"]) == (2, 2, [trained[1][1]])
    for stage in log["stages"].values():
        assert stage["steps"] == 2 and [p["step"] for p in stage["curve"]] == [1, 2]
        assert all(np.isfinite(p["loss"]) for p in stage["curve"]) and stage["wall_s"] > 0
    # each stage's components moved away from their initialisation
    fresh = new_components(0)
    pipe = build_pipeline(GeneratorConfig(base_model=os.path.join(out, "pipeline"), size=SIZE, steps=2))
    for name in ("vae", "unet", "text_encoder"):
        trained_sd, init_sd = getattr(pipe, name).state_dict(), fresh[name].state_dict()
        assert any(not torch.equal(trained_sd[k], init_sd[k]) for k in init_sd), name
    # the VAE's latent scale was measured, not left at 1
    assert pipe.vae.config.scaling_factor != 1.0
    assert pipe.controlnet.config.conditioning_embedding_out_channels == list(
        ARCH["controlnet_extra"]["conditioning_embedding_out_channels"]
    )


def test_the_pipeline_folder_is_a_base_model_that_keeps_product_pixels(trained):
    out, _ = trained
    folder = os.path.join(out, "pipeline")
    assert set(json.load(open(os.path.join(folder, "model_index.json")))) >= {"unet", "vae", "controlnet"}
    stage = GenerateStage(GeneratorConfig(base_model=folder, size=SIZE, steps=2))
    cond = ConditioningConfig(size=SIZE)
    sample = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "assets", "samples", "mug-002.png")
    row = condition_row("mug-002", open(sample, "rb").read(), sample, 1, cond, PromptPolicy())
    out_batch = stage(stack_rows([row]))
    inside = row["product_rgba"][..., 3] == 255
    assert np.array_equal(out_batch["generated"][0][inside], row["product_rgba"][..., :3][inside])


def test_a_rerun_resumes_and_skips_finished_stages(trained, capsys):
    out, argv = trained
    before = json.load(open(os.path.join(out, "train_log.json")))
    assert jobs.train_generator.main(argv) == 0
    assert json.load(open(os.path.join(out, "train_log.json")))["stages"] == before["stages"]


def test_an_incomplete_pipeline_folder_names_the_missing_component(trained, tmp_path):
    import shutil

    out, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(os.path.join(out, "pipeline"), broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelPathError, match="component 'unet'"):
        build_pipeline(GeneratorConfig(base_model=str(broken), size=SIZE))


def test_bad_sets_fail_before_ray_starts(tmp_path, capsys):
    import ray

    ray.shutdown()
    for data, message in ((tmp_path / "nowhere", "not a folder"), (tmp_path, "no scenes.json")):
        out = tmp_path / "out"
        assert jobs.train_generator.main(["--data", str(data), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(data) in err
        assert not ray.is_initialized() and not out.exists()


def test_a_later_stage_alone_needs_the_earlier_components(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    assert jobs.train_generator.main(["--data", scenes, "--output", str(out), "--stages", "unet,controlnet"]) == 2
    assert "needs 'vae' from stage 'vae'" in capsys.readouterr().err


def test_latent_mask_is_the_pipelines_own(trained):
    """The inpainting share trains on the mask the pipeline paints under: the same binarising and resizing."""
    from toy.train_generator import latent_mask

    out, _ = trained
    pipe = build_pipeline(GeneratorConfig(base_model=os.path.join(out, "pipeline"), size=SIZE, steps=2))
    cond = ConditioningConfig(size=SIZE)
    sample = os.path.join(os.path.dirname(__file__), "..", "..", "engine", "assets", "samples", "mug-002.png")
    row = condition_row("mug-002", open(sample, "rb").read(), sample, 1, cond, PromptPolicy())
    processed = pipe.mask_processor.preprocess(
        (row["inpaint_mask"].astype(np.float32) / 255.0)[None, ..., None], height=SIZE, width=SIZE
    )
    latent = SIZE // 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    theirs, _ = pipe.prepare_mask_latents(
        processed, processed.expand(-1, 3, -1, -1), 1, SIZE, SIZE, torch.float32, "cpu", None, False
    )
    ours = latent_mask(row["inpaint_mask"][None], latent)
    assert ours.shape == theirs.shape == (1, 1, latent, latent)
    assert torch.equal(ours, theirs) and 0 < ours.mean() < 1


def test_learning_rate_warms_up_then_anneals_to_zero():
    from toy.train_generator import _lr_factor

    assert _lr_factor(0, 1000, 100) == pytest.approx(0.01)
    assert _lr_factor(99, 1000, 100) == pytest.approx(1.0)
    assert _lr_factor(100, 1000, 100) == pytest.approx(1.0)
    assert _lr_factor(550, 1000, 100) == pytest.approx(0.5)  # half way through the cosine
    assert _lr_factor(1000, 1000, 100) == pytest.approx(0.0)


def test_min_snr_weights_cap_the_nearly_clean_steps():
    from diffusers import DDPMScheduler

    from engine.models import _SD15_SCHEDULE
    from toy.train_generator import _snr_weight

    schedule = DDPMScheduler(**_SD15_SCHEDULE)
    t = torch.tensor([0, 100, 500, 999])
    alpha_bar = schedule.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    w = _snr_weight(schedule, t, 5.0)
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[0] < 0.01 and w[-1] == 1.0  # t = 0 has SNR ~1000; the noisiest steps keep weight 1
    assert torch.equal(_snr_weight(schedule, t, 0.0), torch.ones(4))
