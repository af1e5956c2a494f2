"""Training recipe of the toy depth and saliency models: Ray Train ``TorchTrainer`` (DDP), CPU (gloo) or GPU.

The depth model (a transformers ``DPTForDepthEstimation``) and the saliency model (a U^2-Net-style
``rfnet.saliency.U2NetStyle``) learn to reproduce the maps ``rfnet.synth.render`` draws for each scene, from the rendered image alone.
One file, read top to bottom:

- ``MapsTrainConfig`` (``rfnet/maps_config.py``): every knob, typed and documented.
- ``fit_maps(cfg)``: the driver. Reads and checks the RF1M set (an empty or unreadable set fails here,
  before Ray starts, naming the set), runs ``TorchTrainer(train_loop_per_worker)``, then writes
  ``<output>/depth`` (``rfnet.depth.save_depth`` layout), ``<output>/saliency`` (``save_saliency`` layout)
  and ``<output>/metrics.json`` (per-epoch losses, held-out RMSE and F-measure).
- ``train_loop_per_worker(config)``: setup -> loop (train both models, evaluate, checkpoint).
- Ray-free helpers: ``render_set`` (fresh renders of a synth seed, exactly what ``adloop synth rf1m``
  writes), ``depth_rmse``, ``saliency_f_measure`` and ``evaluate_maps``.

What the models learn to output. The renderer's depth is absolute on a fixed scale (wall 0.12, floor 0.3
at the horizon to 1.0 at the bottom, the product at the floor depth of its contact point), and its
saliency is dimmed by low product/wall contrast, which RFNet uses to spot indistinct products. A per-image
min-max would erase both, so both toy models are saved with min-max off (``minmax: false``): the depth
model's prediction is clamped to [0, 1], the saliency model's sigmoid is used as it is. Losses: L1 on the
raw depth prediction (the median is the right answer where the image cannot tell, e.g. a product that
only the depth map shows floating), binary cross-entropy with the soft saliency map as target.

Held-out metrics (``evaluate_maps``), on renders of ``eval_seed`` (a seed the training set was not written
with), at ``image_size`` px, against the maps as ``adloop synth rf1m`` stores them (8-bit, /255):

- depth RMSE: the root of the mean squared error over every pixel of every image, maps in [0, 1];
- saliency F-measure: the mean over images of F_beta (beta^2 = 0.3) = (1 + b2) P R / (b2 P + R), the
  prediction binarised at the adaptive threshold min(2 x its mean, 1) (Achanta et al.), the truth at
  ``saliency_truth_threshold`` (0.5); images whose truth has no pixel above it are left out (counted).

There is no resume: a run is minutes long; rerunning starts over.
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

from rfnet.maps_config import MapsTrainConfig

logger = logging.getLogger(__name__)

DEPTH_MEAN = (0.5, 0.5, 0.5)
DEPTH_STD = (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------------------------- helpers


def render_set(n: int, seed: int, size: int) -> dict[str, np.ndarray]:
    """Render ``n`` scenes of synth ``seed`` exactly as ``rfnet.synth.generate_rf1m`` writes them (4 images
    per product), without touching the disk.

    Returns:
        ``generated`` (n, size, size, 3) uint8, ``depth`` and ``saliency`` (n, size, size) uint8, ``label``
        (n,) object.
    """
    from rfnet.synth import _down, _to_u8, draw_labels, make_product, render

    out: dict[str, list] = {"generated": [], "depth": [], "saliency": [], "label": []}
    pid = 0
    while len(out["label"]) < n:
        product = make_product(pid, seed, 2 * size)
        rng = np.random.default_rng([seed, pid, 1])
        for k, label in enumerate(draw_labels(4, product.unsuitable, rng, 0.55, product.size_class)):
            if len(out["label"]) == n:
                break
            maps = render(product, label, np.random.default_rng([seed, pid, 2, k]))
            for key in ("generated", "depth", "saliency"):
                out[key].append(_to_u8(_down(maps[key], size)))
            out["label"].append(label)
        pid += 1
    return {k: np.stack(v) if k != "label" else np.array(v, dtype=object) for k, v in out.items()}


def depth_rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root of the mean squared error over all pixels; (N, H, W) float maps in [0, 1]."""
    return float(np.sqrt(np.mean((pred.astype(np.float64) - truth.astype(np.float64)) ** 2)))


def saliency_f_measure(
    pred: np.ndarray, truth: np.ndarray, truth_threshold: float = 0.5, beta2: float = 0.3
) -> tuple[float, int]:
    """Mean F_beta at the adaptive threshold (see the module doc).

    Args:
        pred, truth: (N, H, W) float maps in [0, 1].
        truth_threshold: level the truth is binarised at.
        beta2: beta squared (0.3 weighs precision over recall, the saliency literature's standard).

    Returns:
        (mean F over the images whose binarised truth is not empty, the number of images left out).
    """
    scores, skipped = [], 0
    for p, t in zip(pred, truth, strict=True):
        gt = t > truth_threshold
        if not gt.any():
            skipped += 1
            continue
        binary = p >= min(2.0 * float(p.mean()), 1.0)
        tp = float((binary & gt).sum())
        precision, recall = tp / max(float(binary.sum()), 1.0), tp / float(gt.sum())
        denom = beta2 * precision + recall
        scores.append((1 + beta2) * precision * recall / denom if denom > 0 else 0.0)
    return (float(np.mean(scores)) if scores else 0.0), skipped


def evaluate_maps(depth, saliency, renders: dict[str, np.ndarray], truth_threshold: float = 0.5) -> dict[str, Any]:
    """Held-out metrics of depth/saliency estimators (``rfnet.depth.load_depth`` / ``load_saliency``
    results, or ``None`` to skip one) on ``render_set`` output.

    Returns:
        ``depth_rmse``, ``saliency_f``, ``saliency_mae``, ``saliency_skipped`` (images without salient truth),
        ``n``: whichever apply.
    """
    from rfnet.preprocess import to_tensor

    out: dict[str, Any] = {"n": len(renders["generated"])}
    for key, est in (("depth", depth), ("saliency", saliency)):
        if est is None:
            continue
        device = next(est.parameters()).device
        preds = []
        for i in range(0, len(renders["generated"]), 64):
            preds.append(est(to_tensor(renders["generated"][i : i + 64], device))[:, 0].float().cpu().numpy())
        pred, truth = np.concatenate(preds), renders[key].astype(np.float32) / 255.0
        if key == "depth":
            out["depth_rmse"] = depth_rmse(pred, truth)
        else:
            out["saliency_f"], out["saliency_skipped"] = saliency_f_measure(pred, truth, truth_threshold)
            out["saliency_mae"] = float(np.mean(np.abs(pred - truth)))
    return out


def _check_data(uri: str, max_examples: int | None) -> list:
    """The examples of ``uri``, each with both maps and every image readable; raises ``DatasetError`` naming
    the set (or ``FileNotFoundError`` when it is not a dataset at all)."""
    from rfnet.data import DatasetError, check_readable, read_dataset

    examples = read_dataset(uri)[:max_examples]
    if not examples:
        raise DatasetError(uri, ["the set has no examples (empty label.txt or manifest)"])
    no_maps = [e.generated for e in examples if not (e.depth and e.saliency)]
    if no_maps:
        raise DatasetError(uri, [f"{g}: no depth and/or saliency map to learn from" for g in no_maps])
    try:
        check_readable(examples)
    except DatasetError as e:
        raise DatasetError(uri, e.problems) from None
    return examples


def _lr_at(step: int, total: int, cfg: MapsTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))


# ----------------------------------------------------------------------------------------------- driver


def fit_maps(cfg: MapsTrainConfig) -> dict[str, Any]:
    """Train the map models on Ray and write ``<output>/depth``, ``<output>/saliency``, ``metrics.json``.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        FileNotFoundError: ``data`` is not a dataset.
        rfnet.data.DatasetError: an empty set, examples without maps, unreadable images (the set named).
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.runtime import init_ray

    cfg = dataclasses.replace(cfg, data=os.path.abspath(cfg.data) if os.path.exists(cfg.data) else cfg.data)
    examples = _check_data(cfg.data, cfg.max_examples)  # before Ray: a bad set costs nothing to find out
    output = os.path.abspath(cfg.output)
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "train_config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)

    t0 = time.perf_counter()
    init_ray(num_cpus=max(2, cfg.num_workers * cfg.cpus_per_worker))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "examples": [e.to_dict() for e in examples]},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.name, storage_path=os.path.join(output, "ray"), checkpoint_config=CheckpointConfig(num_to_keep=1)
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        for model in cfg.models:
            shutil.rmtree(os.path.join(output, model), ignore_errors=True)
            shutil.copytree(os.path.join(d, model), os.path.join(output, model))
    metrics = {
        "history": result.metrics["history"],
        "eval": result.metrics["history"][-1].get("eval"),
        "train_examples": len(examples),
        "eval_seed": cfg.eval_seed,
        "eval_images": cfg.eval_images,
        "num_workers": cfg.num_workers,
        "wall_s": time.perf_counter() - t0,
        "outputs": {m: os.path.join(output, m) for m in cfg.models},
    }
    with open(os.path.join(output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


# ----------------------------------------------------------------------------------------------- worker


def _decode_shard(examples: list[dict], size: int) -> dict[str, np.ndarray]:
    from rfnet.data import decode_examples

    parts = [decode_examples(examples[i : i + 256], size) for i in range(0, len(examples), 256)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("generated", "depth", "saliency")}


def _freeze_unused(model: torch.nn.Module, probe) -> None:
    """Freeze the parameters no output depends on (DPT's final backbone layernorm and the first fusion
    layer's unused residual block), which DDP would otherwise wait for."""
    probe(model).float().sum().backward()
    for p in model.parameters():
        if p.grad is None:
            p.requires_grad_(False)
        p.grad = None


def _build(cfg: MapsTrainConfig) -> dict[str, torch.nn.Module]:
    from transformers import DPTConfig, DPTForDepthEstimation

    from rfnet.saliency import U2NetStyle

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    models: dict[str, torch.nn.Module] = {}
    if "depth" in cfg.models:
        models["depth"] = DPTForDepthEstimation(DPTConfig(**cfg.depth_model))
        size = int(cfg.depth_model["image_size"])
        _freeze_unused(models["depth"], lambda m: m(pixel_values=torch.zeros(1, 3, size, size)).predicted_depth)
    if "saliency" in cfg.models:
        models["saliency"] = U2NetStyle(cfg.saliency_model)
    return models


def _save(models: dict[str, torch.nn.Module], folder: str, cfg: MapsTrainConfig) -> None:
    from rfnet.depth import save_depth
    from rfnet.saliency import save_saliency

    if "depth" in models:
        size = int(cfg.depth_model["image_size"])
        save_depth(models["depth"], os.path.join(folder, "depth"), size, DEPTH_MEAN, DEPTH_STD, cfg.depth_minmax)
    if "saliency" in models:
        save_saliency(models["saliency"], os.path.join(folder, "saliency"))


def _estimators(models: dict[str, torch.nn.Module], cfg: MapsTrainConfig, device) -> dict[str, Any]:
    """Frozen copies of the models behind the same wrappers ``load_depth``/``load_saliency`` return."""
    import copy

    from rfnet.depth import DepthEstimator
    from rfnet.saliency import SaliencyEstimator

    out: dict[str, Any] = {"depth": None, "saliency": None}
    if "depth" in models:
        model = copy.deepcopy(models["depth"])
        size = int(cfg.depth_model["image_size"])
        out["depth"] = DepthEstimator(model, size, DEPTH_MEAN, DEPTH_STD, cfg.depth_minmax).to(device)
    if "saliency" in models:
        sal = cfg.saliency_model
        out["saliency"] = SaliencyEstimator(copy.deepcopy(models["saliency"]), sal.input_size, sal.minmax).to(device)
    return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The per-worker recipe: setup -> (train, evaluate, checkpoint) per epoch."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from rfnet.depth import predict_depth
    from rfnet.preprocess import IMAGE_MEAN, IMAGE_STD, to_tensor
    from rfnet.saliency import saliency_logits

    cfg = MapsTrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()

    # --- setup: this rank's shard (equal sizes, so every rank takes the same number of steps), the models
    examples = config["examples"]
    per_rank = len(examples) // world
    if per_rank < cfg.batch_size:
        raise ValueError(
            f"{len(examples)} examples give {per_rank} per worker, fewer than a batch of {cfg.batch_size}"
        )
    shard = _decode_shard(examples[rank::world][:per_rank], cfg.image_size)
    models = _build(cfg)
    wrapped = {m: ray.train.torch.prepare_model(model) for m, model in models.items()}
    optimizers = {
        m: torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        for m, model in models.items()
    }
    d_mean = torch.tensor(DEPTH_MEAN, device=device).view(1, 3, 1, 1)
    d_std = torch.tensor(DEPTH_STD, device=device).view(1, 3, 1, 1)
    s_mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    s_std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)
    steps = per_rank // cfg.batch_size
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    total = steps * cfg.epochs
    renders = render_set(cfg.eval_images, cfg.eval_seed, cfg.image_size) if rank == 0 and cfg.eval_images else None
    if rank == 0:
        logger.info(
            "***** Running map-model training ***** models=%s workers=%d batch/worker=%d steps/epoch=%d epochs=%d "
            "lr=%g examples=%d params=%s",
            ",".join(cfg.models), world, cfg.batch_size, steps, cfg.epochs, cfg.lr, len(examples),
            {m: sum(p.numel() for p in model.parameters()) for m, model in models.items()},
        )  # fmt: skip

    # --- loop
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(cfg.epochs):
        for model in wrapped.values():
            model.train()
        order = np.random.default_rng([cfg.seed, epoch, rank]).permutation(per_rank)
        sums = dict.fromkeys(models, 0.0)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = np.sort(order[i * cfg.batch_size : (i + 1) * cfg.batch_size])
            images = to_tensor(shard["generated"][idx], device)
            lr = _lr_at(step, total, cfg)
            for m, model in wrapped.items():
                target = to_tensor(shard[m][idx], device)
                if m == "depth":
                    loss = F.l1_loss(
                        predict_depth(model, images, int(cfg.depth_model["image_size"]), d_mean, d_std), target
                    )
                else:
                    loss = F.binary_cross_entropy_with_logits(
                        saliency_logits(model, images, cfg.saliency_model.input_size, s_mean, s_std), target
                    )
                opt = optimizers[m]
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                opt.step()
                sums[m] += loss.detach().item()
            step += 1
        elapsed = time.perf_counter() - t0
        losses = torch.tensor([sums[m] / max(steps, 1) for m in models])
        if dist.is_initialized():
            dist.all_reduce(losses)
            losses /= world
        entry: dict[str, Any] = {
            "epoch": epoch,
            "lr_end": float(lr),
            "train_samples_per_s": steps * cfg.batch_size * world / max(elapsed, 1e-9),
            "epoch_s": elapsed,
            **{f"{m}_loss": float(v) for m, v in zip(models, losses, strict=True)},
        }

        # --- evaluate (held-out renders, rank 0), checkpoint
        if renders is not None:
            est = _estimators(models, cfg, device)
            entry["eval"] = evaluate_maps(est["depth"], est["saliency"], renders, cfg.saliency_truth_threshold)
        history.append(entry)
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                _save(models, tmp, cfg)
            if dist.is_initialized():
                dist.barrier()
            ray.train.report({"epoch": epoch, "history": history}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if rank == 0:
            logger.info("epoch %d: %s", epoch, entry)
