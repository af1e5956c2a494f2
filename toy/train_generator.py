"""The toy generator recipe: an SD 1.5-shaped pipeline trained from scratch on the synthetic world.

One file, read top to bottom. ``fit(cfg)`` is the driver; ``train_loop_per_worker(config)`` runs one
stage under Ray Train (``TorchTrainer``, DDP or DeepSpeed, CPU/gloo or GPU/nccl). The stages are the
standard latent-diffusion recipe, in order:

1. ``vae``: the autoencoder, on reconstruction (L1 + MSE) plus a small KL term; afterwards the latents'
   standard deviation sets ``scaling_factor`` (SD 1.5's 0.18215 is the same measurement on its data).
2. ``unet``: noise prediction on the frozen VAE's latents, the CLIP text encoder training with it (there
   is no pretrained one to freeze); ``prompt_dropout`` of the prompts are replaced by the empty prompt or
   the templates' negative prompt, so classifier-free guidance works at generation time.
3. ``controlnet``: a ControlNet copied from the trained UNet (``ControlNetModel.from_unet``), trained on
   the canny edges of the laid-out product (``engine.conditioning.build_condition``, exactly the control
   image of generation time) with UNet, VAE and text encoder frozen.

Each stage is a Ray Train run named ``<name>-<stage>`` under ``<output>/ray``: it checkpoints every
``checkpoint_every`` steps and a rerun of ``fit`` with the same output resumes it; finished stages (their
components in ``<output>/components``) are not run again. The result is ``<output>/pipeline``, a diffusers
``StableDiffusionControlNetInpaintPipeline`` folder that ``--base-model`` loads like any SD 1.5 folder,
and ``<output>/train_log.json`` with each stage's loss curve and wall time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toy.config import STAGES, TRAINS, GeneratorTrainConfig

logger = logging.getLogger(__name__)

# The toy architecture: SD 1.5's layout (a KL autoencoder with 4 latent channels; a UNet of plain and
# cross-attention down/up blocks; a CLIP text encoder; a ControlNet copied from the UNet) at widths that
# train on 2 CPU cores. One change of proportion: the VAE down-samples 4x, not 8x, so a 128 px canvas has
# 32 x 32 latents. SD 1.5 paints 512 px from 64 x 64 latents, a latent cell 1/64 of the canvas; at 8x a
# 128 px canvas would get 16 x 16 cells of 8 px, coarser than the world's finest floor tiles (7 px), and a
# product's outline would be blurred over a twelfth of the canvas (measured: docs/benchmarks.md).
ARCH: dict[str, dict[str, Any]] = {
    "vae": {
        "block_out_channels": (16, 32, 64),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        # No attention in the bottleneck: the VAE trains on crops, and attention would see a wider context
        # on whole canvases than it learned on.
        "mid_block_add_attention": False,
    },
    "unet": {
        "block_out_channels": (32, 64, 64, 64),
        "layers_per_block": 1,
        "in_channels": 4,
        "out_channels": 4,
        # Cross-attention at the 8 x 8 and 4 x 4 levels only: at 32 x 32 and 16 x 16 it would cost most of a
        # training step on CPU, and what the prompt controls here (colours, scene scale) is coarse.
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    },
    # The ControlNet's conditioning embedding down-samples the control image to the latent size (4x).
    "controlnet_extra": {"conditioning_embedding_out_channels": (16, 32, 64)},
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 77,
        "projection_dim": 64,
    },
}


# ----------------------------------------------------------------------------------------------- driver


class DecodeScenes:
    """Ray Data ``map_batches`` callable: scene rows -> uint8 arrays, plus what generation time gives the
    pipeline for the scene's product: the control image, the init image (the product on white) and the
    inpaint mask."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from engine.conditioning import build_condition
        from engine.config import ConditioningConfig
        from toy.scenes import decode_png

        images = np.stack([decode_png(b) for b in batch["image"]])
        cfg = ConditioningConfig(size=images.shape[1])
        conds = [build_condition(decode_png(b), cfg) for b in batch["product"]]
        return {
            "image": images,
            "control": np.stack([c.control[..., 0] for c in conds]),
            "init": np.stack([c.image for c in conds]),
            "inpaint_mask": np.stack([c.inpaint_mask for c in conds]),
            "prompt": batch["prompt"],
        }


def fit(cfg: GeneratorTrainConfig) -> dict[str, Any]:
    """Run the stages of ``cfg`` on Ray and write ``<output>/pipeline`` and ``<output>/train_log.json``.

    Returns:
        The contents of ``train_log.json``.

    Raises:
        toy.scenes.SceneSetError: the scene set is missing, empty or unreadable (raised before Ray starts).
    """
    import ray.data
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.runtime import init_ray
    from toy.scenes import check_scene_set

    meta = check_scene_set(cfg.data)
    cfg = dataclasses.replace(cfg, data=os.path.abspath(cfg.data), output=os.path.abspath(cfg.output))
    if cfg.prompts:
        cfg = dataclasses.replace(cfg, prompts=os.path.abspath(cfg.prompts))
    components = os.path.join(cfg.output, "components")
    for stage in STAGES[: STAGES.index(cfg.stages[0])]:
        for comp in TRAINS[stage]:
            if not os.path.isdir(os.path.join(components, comp)):
                raise FileNotFoundError(
                    f"stage {cfg.stages[0]!r} needs {comp!r} from stage {stage!r}: {components}/{comp} does not exist"
                )
    os.makedirs(components, exist_ok=True)
    with open(os.path.join(cfg.output, "train_config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    log_path = os.path.join(cfg.output, "train_log.json")
    log = json.load(open(log_path)) if os.path.exists(log_path) else {"size": meta["size"], "stages": {}}

    init_ray(num_cpus=max(2, cfg.num_workers * cfg.cpus_per_worker))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # Decoded once and kept in the object store: every stage reads it, and the training workers hold all
    # of a small machine's CPUs, so a streaming read would have none left to run on.
    scenes = ray.data.read_parquet(meta["shards"]).map_batches(DecodeScenes, batch_size=64, concurrency=1)
    scenes = scenes.materialize()
    for stage in cfg.stages:
        if all(os.path.isdir(os.path.join(components, c)) for c in TRAINS[stage]):
            logger.info("stage %s already done (%s); skipping", stage, components)
            continue
        start = time.perf_counter()
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.to_dict(), "stage": stage, "components": components},
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
            ),
            run_config=RunConfig(
                name=f"{cfg.name}-{stage}",
                storage_path=os.path.join(cfg.output, "ray"),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
            datasets={"train": scenes},
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"stage {stage} finished without a checkpoint: {result.error}")
        with result.checkpoint.as_directory() as d:
            for comp in TRAINS[stage]:
                shutil.rmtree(os.path.join(components, comp), ignore_errors=True)
                shutil.copytree(os.path.join(d, "components", comp), os.path.join(components, comp))
            with open(os.path.join(d, "state.json")) as f:
                state = json.load(f)
        log["stages"][stage] = {
            "steps": state["step"],
            "wall_s": round(time.perf_counter() - start, 1),  # this run's, start-up included
            "train_s": state["curve"][-1]["s"],  # the stage's training time, across resumes
            "curve": state["curve"],
        }
        with open(log_path, "w") as f:
            json.dump(log, f, indent=2)
    if all(os.path.isdir(os.path.join(components, c)) for stage in STAGES for c in TRAINS[stage]):
        assemble(components, os.path.join(cfg.output, "pipeline"))
        log["pipeline"] = os.path.join(cfg.output, "pipeline")
        with open(log_path, "w") as f:
            json.dump(log, f, indent=2)
    return log


def assemble(components: str, out: str) -> None:
    """Write the diffusers pipeline folder from the trained components (+ tokenizer and DDIM scheduler)."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        StableDiffusionControlNetInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    from engine.models import make_scheduler
    from engine.tokenizer import build_tokenizer

    pipe = StableDiffusionControlNetInpaintPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(components, "vae")),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(components, "text_encoder")),
        tokenizer=build_tokenizer(),
        unet=UNet2DConditionModel.from_pretrained(os.path.join(components, "unet")),
        controlnet=ControlNetModel.from_pretrained(os.path.join(components, "controlnet")),
        scheduler=make_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # Shards of at most 4 MB: the repo ships this folder, and no tracked file should pass 5 MB.
    pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size="4MB")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# ----------------------------------------------------------------------------------------------- worker


def new_components(seed: int) -> dict[str, nn.Module]:
    """Random-weight VAE, UNet and text encoder of the toy architecture, seeded per component."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.tokenizer import build_tokenizer

    tok = build_tokenizer()
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(seed)
    vae = AutoencoderKL(**ARCH["vae"])
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**ARCH["unet"])
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**ARCH["text"], **special))
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder}


def _load(components: str, name: str) -> nn.Module:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    classes = {
        "vae": AutoencoderKL,
        "unet": UNet2DConditionModel,
        "text_encoder": CLIPTextModel,
        "controlnet": ControlNetModel,
    }
    return classes[name].from_pretrained(os.path.join(components, name))


class VAELoss(nn.Module):
    """Stage 1's forward: reconstruction + KL of a batch of images in [-1, 1]."""

    def __init__(self, vae: nn.Module, kl_weight: float) -> None:
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + self.kl_weight * posterior.kl().mean()


class DenoiseLoss(nn.Module):
    """Stages 2 and 3's forward: epsilon-prediction MSE, with or without a ControlNet in front of the UNet."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, controlnet: nn.Module | None = None) -> None:
        super().__init__()
        self.unet, self.text_encoder, self.controlnet = unet, text_encoder, controlnet

    def forward(self, noisy, timesteps, noise, input_ids, control=None, mask=None, sample_weight=None):
        """Epsilon MSE; ``mask`` (B, 1, h, w) keeps the latent cells that count, ``sample_weight`` (B,) weighs
        each sample's mean over them."""
        text = self.text_encoder(input_ids)[0]
        residuals = {}
        if self.controlnet is not None:
            down, mid = self.controlnet(noisy, timesteps, text, controlnet_cond=control, return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        pred = self.unet(noisy, timesteps, text, **residuals).sample
        err = (pred.float() - noise.float()) ** 2
        mask = torch.ones_like(err[:, :1]) if mask is None else mask
        per_sample = (err * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * err.shape[1]).clamp(min=1.0)
        return per_sample.mean() if sample_weight is None else (per_sample * sample_weight).mean()


def _setup_strategy(cfg: GeneratorTrainConfig, module: nn.Module, lr: float, world: int):
    """Wrap ``module`` (a loss module) for ``cfg.strategy``; returns (model, optimizer, step_fn).

    The one place DDP and DeepSpeed differ: ``step_fn(loss)`` does backward + clip + step.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.strategy == "deepspeed":
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/adloop/torch_extensions"))
        import deepspeed

        batch = cfg.vae_batch_size if isinstance(module, VAELoss) else cfg.batch_size
        ds_config = {
            "train_micro_batch_size_per_gpu": batch,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": cfg.zero_stage},
            "gradient_clipping": 1.0,
            "steps_per_print": 10**9,
        }
        # A torch optimizer object, not a DeepSpeed-config one: DeepSpeed would JIT-compile its own.
        engine, optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)

        def ds_step(loss: torch.Tensor) -> None:
            engine.backward(loss)
            engine.step()

        return engine, optimizer, ds_step
    import ray.train.torch

    model = ray.train.torch.prepare_model(module) if world > 1 else module

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return model, optimizer, step


def _batches(shard, batch_size: int, seed: int):
    """Endless shuffled numpy batches from this worker's shard (epoch after epoch)."""
    epoch = 0
    while True:
        yield from shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=True,  # equal step counts on every rank, or an all-reduce would wait forever
            local_shuffle_buffer_size=8 * batch_size,
            local_shuffle_seed=seed + epoch,
        )
        epoch += 1


@torch.no_grad()
def _encode_shard(shard, vae: nn.Module, device) -> dict[str, Any]:
    """One pass over this worker's shard: each scene's VAE posterior (mean, std), control image and prompt."""
    cache: dict[str, list] = {k: [] for k in ("mean", "std", "init_mean", "init_std", "mask", "control", "prompt")}
    for batch in shard.iter_batches(batch_size=64, batch_format="numpy"):
        for prefix, column in (("", "image"), ("init_", "init")):
            posterior = vae.encode(_pixels(batch[column], device)).latent_dist
            cache[prefix + "mean"].append(posterior.mean.cpu())
            cache[prefix + "std"].append(posterior.std.cpu())
        cache["mask"].append(latent_mask(batch["inpaint_mask"], posterior.mean.shape[-1]))
        cache["control"].append(batch["control"])
        cache["prompt"].extend(str(p) for p in batch["prompt"])
    return {
        **{k: torch.cat(v) for k, v in cache.items() if k not in ("control", "prompt")},
        "control": np.concatenate(cache["control"]),
        "prompt": cache["prompt"],
    }


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a half cosine from 1 to 0 at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + float(np.cos(np.pi * (step - warmup) / max(1, total - warmup))))


def _snr_weight(schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of epsilon-prediction losses at timesteps ``t``: min(SNR, gamma) / SNR."""
    if gamma <= 0:
        return torch.ones(len(t))
    alpha_bar = schedule.alphas_cumprod.to(t.device)[t]
    snr = alpha_bar / (1.0 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def _sample(mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A draw from the VAE posterior N(mean, std^2)."""
    return mean + std * torch.randn(mean.shape, generator=gen)


def latent_mask(inpaint_mask: np.ndarray, latent_size: int) -> torch.Tensor:
    """(B, S, S) uint8 {0, 255} inpaint masks -> (B, 1, h, h) float {0, 1}: 1 where the pipeline paints.

    What ``StableDiffusionControlNetInpaintPipeline`` does to its mask: binarised at 0.5, then resized to
    the latents with nearest-neighbour ``interpolate``.
    """
    mask = (torch.from_numpy(np.ascontiguousarray(inpaint_mask)).float() / 255.0 >= 0.5).float()[:, None]
    return F.interpolate(mask, size=(latent_size, latent_size))


def _cached_batches(cache: dict[str, Any], batch_size: int, rng: np.random.Generator):
    """Endless shuffled batches of the encoded shard (every rank has as many rows, so as many steps)."""
    n = len(cache["prompt"])
    if n < batch_size:
        raise ValueError(f"this worker's shard has {n} scenes, fewer than the batch size {batch_size}")
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield {k: [v[i] for i in idx] if k == "prompt" else v[idx] for k, v in cache.items()}


def _pixels(images: np.ndarray, device) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float in [-1, 1], what the VAE reads and writes."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _conditioning_text(prompts: np.ndarray, rng: np.random.Generator, cfg: GeneratorTrainConfig, negatives):
    """Prompts with ``prompt_dropout`` of them swapped for unconditional text (empty or a negative prompt)."""
    out = []
    for p in prompts:
        if rng.random() < cfg.prompt_dropout:
            out.append("" if rng.random() < 0.5 else negatives[int(rng.integers(len(negatives)))])
        else:
            out.append(str(p))
    return out


def _save(folder: str, modules: dict[str, nn.Module], optimizer, state: dict) -> None:
    for name, module in modules.items():
        module.save_pretrained(os.path.join(folder, "components", name), safe_serialization=True)
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump(state, f)


@torch.no_grad()
def _latent_std(vae: nn.Module, images: list[torch.Tensor]) -> float:
    """Standard deviation of the VAE's latents of ``images`` (batches in [-1, 1]); sets ``scaling_factor``."""
    return float(torch.cat([vae.encode(x).latent_dist.sample().flatten() for x in images]).std())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One stage on one worker: setup -> resume -> loop (log, checkpoint) -> final checkpoint."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    from diffusers import ControlNetModel, DDPMScheduler

    from engine.models import _SD15_SCHEDULE
    from engine.prompts import load_prompt_config
    from engine.tokenizer import build_tokenizer

    cfg = GeneratorTrainConfig(**config["cfg"])
    stage, components = config["stage"], config["components"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")

    # --- setup: this stage's trainable components fresh (or from its checkpoint), earlier ones frozen
    checkpoint = ray.train.get_checkpoint()
    resume_dir = checkpoint.to_directory() if checkpoint is not None else None
    source = os.path.join(resume_dir, "components") if resume_dir else None
    fresh = new_components(cfg.seed)
    if stage == "vae":
        trained = {"vae": _load(source, "vae") if source else fresh["vae"]}
        module = VAELoss(trained["vae"], cfg.kl_weight)
    else:
        vae = _load(components, "vae").requires_grad_(False).eval().to(device)
        if stage == "unet":
            trained = {n: _load(source, n) if source else fresh[n] for n in ("unet", "text_encoder")}
            module = DenoiseLoss(trained["unet"], trained["text_encoder"])
        else:
            unet = _load(components, "unet").requires_grad_(False)
            text_encoder = _load(components, "text_encoder").requires_grad_(False)
            if source:
                controlnet = _load(source, "controlnet")
            else:
                torch.manual_seed(cfg.seed)
                controlnet = ControlNetModel.from_unet(unet, **ARCH["controlnet_extra"])
            trained = {"controlnet": controlnet}
            module = DenoiseLoss(unet, text_encoder, controlnet)
    module.to(device)
    assert all(p.dtype == torch.float32 for m in trained.values() for p in m.parameters()), "trainable weights fp32"
    lr = cfg.vae_lr if stage == "vae" else cfg.lr
    model, optimizer, step_fn = _setup_strategy(cfg, module, lr, world)
    state = {"step": 0, "curve": []}
    if resume_dir:
        optimizer.load_state_dict(torch.load(os.path.join(resume_dir, "optimizer.pt"), weights_only=True))
        with open(os.path.join(resume_dir, "state.json")) as f:
            state = json.load(f)
        logger.info("stage %s resumed at step %d", stage, state["step"])

    tokenizer = build_tokenizer()
    negatives = sorted({t.negative_prompt for t in load_prompt_config(cfg.prompts)})
    noise_schedule = DDPMScheduler(**_SD15_SCHEDULE)
    batch_size = cfg.vae_batch_size if stage == "vae" else cfg.batch_size
    total = cfg.steps_of(stage)
    rng = np.random.default_rng([cfg.seed, STAGES.index(stage), rank, state["step"]])
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))
    scaling = 1.0 if stage == "vae" else float(vae.config.scaling_factor)
    if rank == 0:
        logger.info(
            "***** Running toy generator stage %s ***** strategy=%s workers=%d batch/worker=%d global batch=%d "
            "steps=%d lr=%g trainable params=%d",
            stage, cfg.strategy, world, batch_size, batch_size * world, total, lr,
            sum(p.numel() for p in module.parameters() if p.requires_grad),
        )  # fmt: skip

    # --- loop
    model.train()
    # Curve times count from the stage's start, across resumes (a resumed run goes on from its last point).
    window, recent = [], []
    t0 = time.perf_counter() - (state["curve"][-1]["s"] if state["curve"] else 0.0)
    if stage == "vae":
        batches = _batches(shard, batch_size, cfg.seed + 1000 * STAGES.index(stage) + state["step"])
    else:
        # The frozen VAE encodes each scene once per stage, not once per step: at 32 x 32 latents encoding
        # cost more than half a UNet step. A latent is still sampled afresh from its posterior every time.
        cache = _encode_shard(shard, vae, device)
        batches = _cached_batches(cache, batch_size, rng)
    while state["step"] < total:
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(state["step"], total, cfg.warmup_steps)
        if stage == "vae":
            x = _pixels(batch["image"], device)
            if 0 < cfg.vae_crop < x.shape[-1]:
                top, left = (int(v) for v in rng.integers(0, x.shape[-1] - cfg.vae_crop + 1, 2))
                x = x[:, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
            loss = model(x)
            recent = [*recent[-7:], x]
        else:
            latents = _sample(batch["mean"], batch["std"], gen) * scaling
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(latents),), generator=gen)
            # ``inpaint_share`` of the rows see what generation gives the model: outside the paint mask, the
            # product-on-white latents (the pipeline's blend), and the loss counts the painted cells only.
            blend = torch.from_numpy(rng.random(len(latents)) < cfg.inpaint_share)[:, None, None, None]
            mask = torch.where(blend, batch["mask"], torch.ones_like(batch["mask"]))
            known = _sample(batch["init_mean"], batch["init_std"], gen) * scaling
            noisy = noise_schedule.add_noise(mask * latents + (1 - mask) * known, noise, t)
            noisy, noise, t, mask = noisy.to(device), noise.to(device), t.to(device), mask.to(device)
            text = _conditioning_text(batch["prompt"], rng, cfg, negatives)
            ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            control = None
            if stage == "controlnet":
                c = torch.from_numpy(np.ascontiguousarray(batch["control"])).to(device).float() / 255.0
                control = c[:, None].expand(-1, 3, -1, -1)
            loss = model(noisy, t, noise, ids.to(device), control, mask, _snr_weight(noise_schedule, t, cfg.snr_gamma))
        step_fn(loss)
        state["step"] += 1
        window.append(float(loss.detach()))
        done = state["step"] == total
        if state["step"] % cfg.log_every == 0 or done:
            point = {"step": state["step"], "loss": float(np.mean(window)), "s": round(time.perf_counter() - t0, 1)}
            state["curve"].append(point)
            window = []
            if rank == 0:
                logger.info("stage %s %s", stage, point)
        if state["step"] % cfg.checkpoint_every == 0 or done:
            if done and stage == "vae":
                # The latents' scale, measured once: the UNet stages divide it out (SD 1.5: 0.18215).
                std = _latent_std(trained["vae"], recent)
                trained["vae"].register_to_config(scaling_factor=1.0 / std)
                state["latent_std"] = std
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    _save(tmp, trained, optimizer, state)
                if dist.is_initialized():
                    dist.barrier()
                ray.train.report(
                    {
                        "stage": stage,
                        "step": state["step"],
                        "loss": state["curve"][-1]["loss"] if state["curve"] else None,
                    },
                    checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None,
                )
