"""The RFFT recipe: reward fine-tuning of the ControlNet under Ray Train (docs/paper.md §5).

One file, read top to bottom: ``train_loop_per_worker(config)`` is setup -> loop -> evaluate -> report.
Each micro-step (:func:`train_step`):

1. samples a product batch's rollout with DDIM and CFG *without* gradients down to a step ``j`` drawn
   uniformly from the last ``grad_window`` steps (``rfft.sampling.rollout``);
2. takes step ``j`` with gradients through both CFG halves of the trainable ControlNet (the frozen
   reference ControlNet runs at the same ``x_t`` for the regulariser), predicts x0, decodes it with
   the VAE and pastes the product back exactly as the engine does;
3. scores the image with the reward passed in (``reward_fn(images, cond) -> (B,)``; the job builds it from
   an RFNet checkpoint: ``log P(Available)``) and minimises ``-mean(reward) + beta * regulariser``.

Only the ControlNet trains (fp32, asserted); UNet, VAE, text encoder and the reward model are frozen and
fingerprinted before and after, and the final report says whether any of them moved. The optimizer is
wrapped by one function, :func:`_setup_strategy`: DDP with a plain AdamW, or DeepSpeed with ZeRO from the
config (given the same AdamW object, which spares DeepSpeed a compile). Checkpoints hold the ControlNet
as a diffusers folder (``controlnet/``, what ``adloop refresh --controlnet`` loads) plus optimizer state
and ``state.json``; a restarted run resumes from the last one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from engine.models import build_pipeline
from rfft import sampling
from rfft.config import RFFTConfig
from rfft.losses import consistent_condition_loss, kl_loss, total_loss

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
CONTROLNET_DIR = "controlnet"
OPTIMIZER_FILE = "optimizer.pt"
DEEPSPEED_DIR = "deepspeed"
DEEPSPEED_TAG = "state"  # not "latest": DeepSpeed writes a file of that name next to the tag folder


# --- helpers (private; the recipe below reads top to bottom) ------------------------------------------


def _fingerprint(modules: dict[str, torch.nn.Module]) -> dict[str, tuple[float, float]]:
    """A cheap checksum per frozen module: (sum, sum of squares) of all parameters, in float64."""
    out = {}
    for name, module in modules.items():
        s = sq = 0.0
        for p in module.parameters():
            d = p.detach().double()
            s += float(d.sum())
            sq += float((d * d).sum())
        out[name] = (s, sq)
    return out


def _rollout_seed(cfg: RFFTConfig, step: int, micro: int, rank: int, row: int) -> int:
    """Rollout noise seed of one row: a pure function of the run seed and where the row is trained."""
    return int(np.random.SeedSequence([cfg.seed, step, micro, rank, row]).generate_state(1, np.uint64)[0] >> 1)


def _grad_step_index(cfg: RFFTConfig, step: int, micro: int, rank: int) -> int:
    """The graded denoising step: uniform over the last ``grad_window`` of ``generator.steps``."""
    rng = np.random.default_rng([cfg.seed, step, micro, rank, 7])
    steps = cfg.generator.steps
    return int(rng.integers(steps - cfg.grad_window, steps))


def _setup_strategy(cfg: RFFTConfig, controlnet: torch.nn.Module, world: int):
    """Wrap the trainable ControlNet and its optimizer for ``cfg.strategy``; returns (model, optimizer, engine).

    ``model`` is what forward passes go through (DDP wrapper or DeepSpeed engine); ``engine`` is the
    DeepSpeed engine or ``None``.
    """
    params = [p for p in controlnet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.strategy == "deepspeed":
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/adloop/torch_extensions"))
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            model=controlnet, optimizer=optimizer, config=cfg.deepspeed_config()
        )
        return engine, optimizer, engine
    import ray.train.torch

    model = ray.train.torch.prepare_model(controlnet) if world > 1 else controlnet
    return model, optimizer, None


def _full_state_dict(controlnet: torch.nn.Module, cfg: RFFTConfig) -> dict[str, torch.Tensor]:
    """The ControlNet's full weights; under ZeRO-3 every rank must call this (parameters are gathered)."""
    if cfg.strategy == "deepspeed" and cfg.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(controlnet.parameters()), modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in controlnet.state_dict().items()}
    return {k: v.detach().clone().cpu() for k, v in controlnet.state_dict().items()}


def train_step(
    pipe,
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    reward_fn,
    batch: dict[str, np.ndarray],
    cfg: RFFTConfig,
    grad_step: int,
    seeds: list[int],
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-step's forward: rollout, graded step, reward, loss. The caller runs backward.

    Args:
        model: the trainable ControlNet (possibly wrapped) that forward passes go through.
        reference: the frozen reference ControlNet (``None`` is allowed with ``regulariser="none"``).
        batch: condition columns (``engine.prepare.condition_row`` + ``caption``), B rows.
    """
    gen = cfg.generator
    prep = sampling.prepare_batch(pipe, batch, gen.steps, gen.size, seeds=seeds)
    out = sampling.rollout(
        pipe,
        model,
        prep,
        grad_step,
        guidance_scale=gen.guidance_scale,
        conditioning_scale=gen.conditioning_scale,
        reference=reference,
    )
    cond = {"product": prep.product, "captions": [str(c) for c in batch["caption"]]}
    reward = reward_fn(out.images, cond)
    loss, parts = total_loss(
        reward,
        cfg.regulariser,
        cfg.beta,
        out.noise_pred_uncond,
        out.noise_pred_text,
        out.ref_noise_pred_uncond,
        out.ref_noise_pred_text,
        feedback_scale=cfg.feedback_scale,
    )
    parts["reward"] = float(reward.detach().mean())
    if out.ref_noise_pred_text is not None:
        # both drifts from the reference, whichever one is optimised: the curves show what each run does to them
        with torch.no_grad():
            parts["cc"] = float(
                consistent_condition_loss(
                    out.noise_pred_uncond, out.noise_pred_text, out.ref_noise_pred_uncond, out.ref_noise_pred_text
                )
            )
            parts["kl"] = float(
                kl_loss(out.noise_pred_uncond, out.noise_pred_text, out.ref_noise_pred_uncond, out.ref_noise_pred_text)
            )
    parts["grad_step"] = grad_step
    return loss, parts


def _append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# --- the recipe ---------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry point.

    ``config`` keys: ``cfg`` (an :class:`RFFTConfig`), ``reward_factory`` (``device -> reward_fn``),
    ``judge_factory`` (``device -> (rfnet.Scorer, inspector)``, as ``rfft.evaluate.judges`` returns them, or
    ``None``: no evaluation), ``eval_products``
    (``rfft.evaluate.Product`` list), ``output_dir`` (where rank 0 appends ``train.jsonl``/``eval.jsonl``).
    """
    import ray.train
    import ray.train.torch

    from rfft.evaluate import Evaluator

    cfg: RFFTConfig = config["cfg"]
    output_dir = config["output_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)

    # --- setup: the engine's pipeline, frozen except for the ControlNet ---
    pipe = build_pipeline(replace(cfg.generator, device=str(device)))
    for frozen in (pipe.unet, pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False).eval()
    controlnet = pipe.controlnet
    # The reference for CC/KL is the *starting* ControlNet of the whole run (copied before any checkpoint
    # is restored). With regulariser "none" it still runs, without gradients, so every run logs its drift.
    reference = copy.deepcopy(controlnet).to(device).requires_grad_(False).eval()
    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            from diffusers import ControlNetModel

            restored = ControlNetModel.from_pretrained(os.path.join(d, CONTROLNET_DIR), local_files_only=True)
            controlnet.load_state_dict(restored.state_dict())
            start_step = int(json.loads(open(os.path.join(d, STATE_FILE)).read())["step"])
    controlnet.to(device=device, dtype=torch.float32).train().requires_grad_(True)
    assert all(p.dtype == torch.float32 for p in controlnet.parameters()), "trainable weights must stay fp32"
    snapshot = copy.deepcopy(controlnet).requires_grad_(False).eval() if rank == 0 else None
    if cfg.gradient_checkpointing:
        for m in (controlnet, pipe.unet, pipe.vae):
            m.enable_gradient_checkpointing()
    model, optimizer, engine = _setup_strategy(cfg, controlnet, world)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if engine is not None:
                engine.load_checkpoint(os.path.join(d, DEEPSPEED_DIR), tag=DEEPSPEED_TAG, load_module_strict=True)
            elif os.path.exists(os.path.join(d, OPTIMIZER_FILE)):
                optimizer.load_state_dict(torch.load(os.path.join(d, OPTIMIZER_FILE), map_location=device))
    reward_fn = config["reward_factory"](device)
    frozen_modules = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "reference": reference}
    if hasattr(reward_fn, "parameters"):
        frozen_modules["reward"] = reward_fn
    fingerprint = _fingerprint(frozen_modules)
    evaluator = None
    if rank == 0 and config.get("judge_factory") is not None and config.get("eval_products"):
        judge, inspector = config["judge_factory"](device)
        evaluator = Evaluator(
            config["eval_products"], cfg.generator, judge, cfg.eval_run_seed, cfg.eval_seeds, inspector=inspector
        )
    shard = ray.train.get_dataset_shard("train")
    trainable = sum(p.numel() for p in controlnet.parameters())
    if rank == 0:
        logger.info(
            "***** Running RFFT ***** workers=%d micro-batch=%d accum=%d effective batch=%d steps=%d..%d "
            "strategy=%s%s regulariser=%s beta=%g trainable ControlNet params=%d",
            world,
            cfg.batch_size,
            cfg.grad_accum,
            cfg.batch_size * cfg.grad_accum * world,
            start_step,
            cfg.max_steps,
            cfg.strategy,
            f" (ZeRO-{cfg.zero_stage})" if engine is not None else "",
            cfg.regulariser,
            cfg.beta,
            trainable,
        )

    def evaluate(step: int, final: bool) -> dict:
        """Rank 0 scores the current weights on the held-out products; every rank joins the gather."""
        state = _full_state_dict(controlnet, cfg)
        if evaluator is None:
            return {}
        snapshot.load_state_dict(state)
        t0 = time.perf_counter()
        measure = cfg.measure_attempts if (step == 0 or final) else 0
        metrics = evaluator(pipe, snapshot, max_attempts=measure)
        metrics["eval_seconds"] = time.perf_counter() - t0
        _append_jsonl(os.path.join(output_dir, "eval.jsonl"), {"step": step, **metrics})
        logger.info("eval @%d: %s", step, {k: v for k, v in metrics.items() if k != "measured"})
        return metrics

    def save_and_report(step: int, metrics: dict) -> None:
        """Every worker saves into a temporary dir, all meet at a barrier, then all report."""
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                snapshot.load_state_dict(_full_state_dict(controlnet, cfg))
                snapshot.save_pretrained(os.path.join(tmp, CONTROLNET_DIR), safe_serialization=True)
                with open(os.path.join(tmp, STATE_FILE), "w") as f:
                    json.dump({"step": step, "config": cfg.to_dict()}, f, default=str)
                if engine is None:
                    torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
            elif cfg.strategy == "deepspeed" and cfg.zero_stage == 3:
                _full_state_dict(controlnet, cfg)  # the gather is collective
            if engine is not None:
                engine.save_checkpoint(os.path.join(tmp, DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
            if world > 1:
                torch.distributed.barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    # --- loop ---
    if start_step == 0:
        evaluate(0, final=False)
    step, micro = start_step, 0
    model.train()
    t_last = time.perf_counter()
    window: list[dict] = []
    while step < cfg.max_steps:
        seen = 0
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
            seen += 1
            boundary = (micro + 1) % cfg.grad_accum == 0
            seeds = [_rollout_seed(cfg, step, micro, rank, i) for i in range(len(batch["seed"]))]
            j = _grad_step_index(cfg, step, micro, rank)
            sync = contextlib.nullcontext()
            if engine is None and world > 1 and not boundary:
                sync = model.no_sync()  # accumulate locally; all-reduce once per optimizer step
            with sync:
                loss, parts = train_step(pipe, model, reference, reward_fn, batch, cfg, j, seeds)
                if engine is not None:
                    engine.backward(loss)  # scales by 1/grad_accum itself
                else:
                    (loss / cfg.grad_accum).backward()
            window.append(parts)
            micro += 1
            if engine is not None:
                engine.step()  # steps the optimizer only at accumulation boundaries
            if not boundary:
                continue
            if engine is None:
                params = [p for p in controlnet.parameters() if p.requires_grad]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or float("inf")))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                grad_norm = float(engine.get_global_grad_norm() or 0.0)
            step += 1
            if rank == 0:
                record = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                record.update(step=step, grad_norm=grad_norm, seconds=time.perf_counter() - t_last)
                _append_jsonl(os.path.join(output_dir, "train.jsonl"), record)
            window.clear()
            t_last = time.perf_counter()
            final = step >= cfg.max_steps
            metrics = {"step": step, "loss": loss.item()}
            if step % cfg.eval_every == 0 or final:
                metrics.update({k: v for k, v in evaluate(step, final).items() if not isinstance(v, dict)})
            if step % cfg.checkpoint_every == 0 or final:
                if final:
                    moved = [n for n, fp in _fingerprint(frozen_modules).items() if fp != fingerprint[n]]
                    metrics["frozen_changed"] = ",".join(moved)
                save_and_report(step, metrics)
            if final:
                break
        if seen == 0:
            raise RuntimeError(f"worker {rank} got no training products; use at least num_workers products")
