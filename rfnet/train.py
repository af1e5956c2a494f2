"""RFNet training recipe: Ray Train ``TorchTrainer`` with DDP or DeepSpeed (ZeRO), CPU (gloo) or GPU.

One file, read top to bottom (torchtune's recipe shape):

- ``TrainConfig`` (``rfnet.train_config``): every knob, typed and documented.
- ``fit(cfg)``: the driver. Reads and validates the dataset, splits it by product into Parquet shards of
  example rows (``<output>/splits/``), runs ``TorchTrainer(train_loop_per_worker)`` on Ray Data streams that
  decode the shards in CPU tasks every epoch (nothing decoded is kept: memory stays flat in the dataset's
  size), then writes ``<output>/rfnet`` (the final checkpoint folder ``rfnet.load`` reads) and
  ``<output>/metrics.json`` (held-out test metrics).
- ``train_loop_per_worker(config)``: setup -> resume -> loop (train, evaluate, checkpoint) -> test.

The schedule: cross-entropy over the six labels, AdamW (docs/paper.md §8, Q4), the lr divided by 10
halfway. The paper's (docs/paper.md §3.3) is lr 1e-4 for 10 epochs; the default here, 1e-3 for 24, is what
the from-scratch tiny preset needs to reach the quality target (``TrainConfig``). Checkpoints go through Ray Train every epoch: each
worker saves into a temporary folder, all workers meet at a barrier, then all report; Ray Train merges
the folders (DeepSpeed writes one optimizer shard per rank). Running ``fit`` again with the same
``output`` and ``name`` resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cluster.paths import checked_path
from rfnet.config import MAP_PRESET_NAMES, PRESET_NAMES
from rfnet.data import DECODED_MODES
from rfnet.train_config import TrainConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- driver


SHARD_ROWS = 256
"""Rows per Parquet shard of a split (``<output>/splits/<split>/``), the unit one read task takes. The training
split's shards are read in a new order every epoch, so smaller shards mix more; at 256, RF1M makes about 4,000
files."""

DECODED_BLOCK_ROWS = 64
"""Rows per decode task and per decoded block (2.4 MB at 64 px, 85 MB at the paper's 384 px). A stream holds a
roughly fixed number of blocks (queued, in flight, split to the workers, prefetched by them), so this sets its
memory."""

INGEST_BUFFER_BLOCKS = 8
"""Decoded blocks a split's stream may queue in the object store ahead of training: a fixed budget, so the store
does not grow with the dataset (Ray Data's default lets a stream fill half the store)."""


def _decode(batch: dict[str, np.ndarray], size: int, estimators: dict | None = None) -> dict[str, np.ndarray]:
    """Example rows (paths, caption, label) -> uint8 arrays at ``size`` px (``rfnet.data.decode_examples``),
    the depth and saliency maps recomputed from the generated image by ``estimators`` when given."""
    from rfnet.data import decode_examples
    from rfnet.preprocess import to_tensor

    keys = list(batch)
    rows = [{k: batch[k][i] for k in keys} for i in range(len(batch["id"]))]
    out = decode_examples(rows, size)
    if estimators:
        g = to_tensor(out["generated"])
        for name, est in estimators.items():
            out[name] = (est(g)[:, 0].numpy() * 255).round().astype(np.uint8)
    missing = [m for m in ("depth", "saliency") if m not in out]
    if missing:
        raise ValueError(f"examples have no {missing} maps; pass maps='compute' to recompute them")
    return out


class _DecodeWithMaps:
    """The decode stage of ``maps="compute"``: an actor that loads the depth and saliency models once."""

    def __init__(self, size: int, depth: str, saliency: str) -> None:
        from rfnet.depth import load_depth
        from rfnet.saliency import load_saliency

        self.size = size
        self.estimators = {"depth": load_depth(depth), "saliency": load_saliency(saliency)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _decode(batch, self.size, self.estimators)


def _pace_scheduling_loop():
    """A Ray Data execution callback class that sleeps a little after each step of the scheduling loop.

    Ray 2.60's loop waits on running tasks, but not when the object-store budget has stopped every task: it then
    spins, and most of a core (measured: 0.6 on a 20,000-example epoch) goes to a stream that only waits for the
    workers to take a block. At a few decode tasks per second, a 10 ms pause per step costs nothing. (A factory,
    so that importing this module does not import ray.)"""
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class PaceSchedulingLoop(ExecutionCallback):
        def on_execution_step(self, executor) -> None:
            time.sleep(0.01)

    return PaceSchedulingLoop


@contextlib.contextmanager
def _ingest_context(image_size: int) -> Iterator[None]:
    """Ray Data settings for the datasets built inside (each keeps a copy of the context it was built in); the
    process's context is restored after, so other datasets of this process are unaffected."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (
        ctx.use_datasource_v2,
        ctx.target_max_block_size,
        ctx.execution_options,
        ctx.custom_execution_callback_classes,
    )
    channels = sum(len(mode) for mode in DECODED_MODES.values())  # uint8 channels of one decoded example
    block_bytes = DECODED_BLOCK_ROWS * channels * image_size * image_size
    # Ray 2.60's default Parquet reader (datasource V2) packs small files into one read task, so one task decoded
    # a whole split into one block and the store grew with the dataset; the V1 reader makes a read task per file.
    ctx.use_datasource_v2 = False
    ctx.target_max_block_size = block_bytes
    ctx.execution_options = copy.deepcopy(ctx.execution_options)
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=INGEST_BUFFER_BLOCKS * block_bytes
    )
    ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, _pace_scheduling_loop()]
    try:
        yield
    finally:
        (
            ctx.use_datasource_v2,
            ctx.target_max_block_size,
            ctx.execution_options,
            ctx.custom_execution_callback_classes,
        ) = saved


def _datasets(shards: dict[str, list[str]], cfg: TrainConfig) -> dict[str, Any]:
    """Each split as a stream: Ray Data reads its Parquet shards and decodes them in CPU tasks while the workers
    train, again every epoch, so a decoded image lives only until its batch is used and the object store holds a
    fixed number of decoded blocks whatever the dataset's size. The training split is read in a new shard order
    every epoch (reseeded per execution, reproducible from ``cfg.seed``); the workers' local shuffle buffer mixes
    rows across shards."""
    import ray
    from ray.data import FileShuffleConfig

    size = cfg.model.image_size
    task_cpus = min(1.0, cfg.data_cpus)
    out = {}
    with _ingest_context(size):
        for name, files in shards.items():
            shuffle = FileShuffleConfig(seed=cfg.seed, reseed_after_execution=True) if name == "train" else None
            ds = ray.data.read_parquet(files, shuffle=shuffle, num_cpus=task_cpus, override_num_blocks=len(files))
            if cfg.maps == "compute":  # an actor, so the depth and saliency models load once
                decode = {
                    "fn": _DecodeWithMaps,
                    "fn_constructor_args": (size, cfg.depth, cfg.saliency),
                    "concurrency": 1,
                }
            else:
                decode = {"fn": _decode, "fn_kwargs": {"size": size}}
            out[name] = ds.map_batches(
                **decode, batch_size=DECODED_BLOCK_ROWS, batch_format="numpy", num_cpus=task_cpus
            )
    return out


def _data_config():
    """Every split is sharded across the workers: train in equal parts (equal step counts, or the gradient
    all-reduce would wait forever), val and test without dropping a row (each example is scored once, by one
    rank, and ``_predict`` gathers them)."""
    from ray.train import DataConfig

    class ShardEverySplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                for rank, split in enumerate(ds.streaming_split(world_size, equal=name == "train")):
                    out[rank][name] = split
            return out

    return ShardEverySplit(datasets_to_split="all")


def _check_cpus(cfg: TrainConfig) -> None:
    """Raise unless the Ray cluster has a CPU for the decode tasks beside the workers' (else they wait forever).

    Raises:
        ValueError: too few CPUs, with the arithmetic.
    """
    import ray

    need = cfg.num_workers * cfg.cpus_per_worker + cfg.data_cpus
    have = ray.cluster_resources().get("CPU", 0)
    if have < need:
        raise ValueError(
            f"the Ray cluster has {have:g} CPUs, training needs {need:g}: {cfg.num_workers} workers x "
            f"{cfg.cpus_per_worker} + data_cpus {cfg.data_cpus:g} for Ray Data's decode tasks"
        )


def absolute_local_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its local data and model paths made absolute (``cluster.paths.checked_path``): Ray Train's
    workers do not run in the caller's directory. Preset names (RFNet's for the model fields, the map models'
    for ``depth`` and ``saliency``), and paths this machine does not have (an fsspec URI, a folder only the
    workers see), pass unchanged."""

    from rfnet.checkpoint import resolve

    def absolute(path: str | None, presets: tuple[str, ...] = PRESET_NAMES) -> str | None:
        return checked_path(path, "path", presets=presets, required=False) if path else path

    m = cfg.model
    data = [absolute(d) for d in cfg.data] if isinstance(cfg.data, list) else absolute(cfg.data)
    model = m.replace(
        image_encoder_path=absolute(m.image_encoder_path),
        text_encoder_path=absolute(m.text_encoder_path),
        tokenizer=absolute(m.tokenizer),
    )
    return dataclasses.replace(
        cfg,
        data=data,
        depth=absolute(cfg.depth, MAP_PRESET_NAMES),
        saliency=absolute(cfg.saliency, MAP_PRESET_NAMES),
        model=model,
        # a shipped checkpoint's name (``toy``) is its folder
        init_from=absolute(resolve(cfg.init_from)) if cfg.init_from else None,
    )


def with_init_from(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the architecture (and tokenizer) of its ``init_from`` checkpoint, so the weights fit.

    Raises:
        FileNotFoundError: ``init_from`` is not a checkpoint folder.
    """
    if cfg.init_from is None:
        return cfg
    from rfnet.checkpoint import config_of

    return dataclasses.replace(cfg, model=config_of(cfg.init_from))


def _check_models(cfg: TrainConfig) -> TrainConfig:
    """Build every model of the run once, here in the driver, so that a folder of an unsupported architecture,
    weights that do not fit or an encoder's preprocessing that cannot be followed fail now, named, instead of
    in every worker; returns ``cfg`` with the model's input size and normalisation resolved.

    Raises:
        PretrainedWeightsError, ValueError: what the loaders raise, naming the file.
    """
    from rfnet.checkpoint import build, load_weights

    model, _ = build(cfg.model)
    if cfg.init_from:
        load_weights(model, cfg.init_from)
    if cfg.maps == "compute":
        from rfnet.depth import load_depth
        from rfnet.saliency import load_saliency

        load_depth(cfg.depth)
        load_saliency(cfg.saliency)
    return dataclasses.replace(cfg, model=model.cfg)


def _quiet_ray_data() -> None:
    import ray.data

    # A progress bar per epoch and split (re-executed every epoch) would drown the training log.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train RFNet on Ray and write ``<output>/rfnet`` and ``<output>/metrics.json``.

    Returns:
        The contents of ``metrics.json``.

    Raises:
        rfnet.data.DatasetError: bad dataset entries (all of them, each with its file named).
        rfnet.weights.PretrainedWeightsError: a model file or folder that is not a supported architecture, or
            whose weights do not fit (named, with the keys).
        ValueError: a split is empty, or the Ray cluster has no CPU for the decode tasks.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.runtime import init_ray
    from rfnet.data import check_readable, read_datasets, split_by_product, write_shards

    cfg = _check_models(with_init_from(absolute_local_paths(cfg)))
    output = os.path.abspath(cfg.output)
    os.makedirs(output, exist_ok=True)
    examples = read_datasets(cfg.data)
    check_readable(examples)
    splits = split_by_product(examples, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    for name, part in splits.items():
        if not part:
            raise ValueError(f"the {name} split is empty: {len(examples)} examples are too few for these fractions")
    # The splits go to disk as Parquet shards; the driver keeps only their paths and sizes, the epochs stream.
    shards = {
        name: write_shards(
            part, os.path.join(output, "splits", name), SHARD_ROWS, cfg.seed if name == "train" else None
        )
        for name, part in splits.items()
    }
    split_sizes = {name: len(part) for name, part in splits.items()}
    del examples, splits
    with open(os.path.join(output, "train_config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)

    init_ray(num_cpus=math.ceil(cfg.num_workers * cfg.cpus_per_worker + cfg.data_cpus))
    _check_cpus(cfg)
    _quiet_ray_data()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=os.path.join(output, "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets=_datasets(shards, cfg),
        dataset_config=_data_config(),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint: {result.error}")
    final = os.path.join(output, "rfnet")
    with result.checkpoint.as_directory() as d:
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(os.path.join(d, "rfnet"), final)
    metrics = {
        "test": result.metrics["test"],
        "val": result.metrics["val"],
        "epoch": result.metrics["epoch"],
        "start_epoch": result.metrics["start_epoch"],
        "train_samples_per_s": result.metrics["train_samples_per_s"],
        "history": result.metrics["history"],
        "checkpoint": final,
        "ray_checkpoint": result.checkpoint.path,
        "split_sizes": split_sizes,
        "strategy": cfg.strategy,
        "num_workers": cfg.num_workers,
        "modalities": list(cfg.model.modalities),
    }
    with open(os.path.join(output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


# ----------------------------------------------------------------------------------------------- worker


def _deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    ds = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.dtype == "bf16"},
        "gradient_clipping": cfg.grad_clip,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return {**ds, **cfg.deepspeed}


def _setup_strategy(model: torch.nn.Module, cfg: TrainConfig):
    """Wrap the model for ``cfg.strategy``; returns (train_model, optimizer, step_fn, unwrapped_model).

    The one place DDP and DeepSpeed differ in the loop: ``step_fn(loss)`` does backward + clip + step.
    """
    import ray.train.torch

    params = [p for p in model.parameters() if p.requires_grad]
    # A torch optimizer object, not a DeepSpeed-config one: DeepSpeed would JIT-compile its own (~45 s).
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.strategy == "ddp":
        wrapped = ray.train.torch.prepare_model(model)

        def step(loss: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()

        return wrapped, optimizer, step, model

    import deepspeed

    model.to(ray.train.torch.get_device())
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, optimizer=optimizer, config=_deepspeed_config(cfg)
    )

    def ds_step(loss: torch.Tensor) -> None:
        engine.backward(loss)
        engine.step()

    return engine, ds_optimizer, ds_step, engine.module


def _to_inputs(batch: dict[str, Any], prep, device: torch.device) -> dict[str, torch.Tensor]:
    from rfnet.preprocess import to_tensor

    return prep(
        product_rgba=to_tensor(batch["product"], device),
        generated=to_tensor(batch["generated"], device),
        depth=to_tensor(batch["depth"], device),
        saliency=to_tensor(batch["saliency"], device),
        captions=[str(c) for c in batch["caption"]],
    )


def mirror_some(inputs: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``inputs`` (``Preprocess`` output) with a random half of the examples mirrored left-right: every
    (B, C, H, W) image of an example flips together, so that the images still line up; tokens stay."""
    images = [k for k, v in inputs.items() if v.ndim == 4]
    if not images:
        return inputs
    flip = torch.rand(len(inputs[images[0]]), generator=generator) < 0.5
    out = dict(inputs)
    for k in images:
        out[k] = torch.where(flip.view(-1, 1, 1, 1).to(inputs[k].device), inputs[k].flip(-1), inputs[k])
    return out


def _collate():
    from ray.data.collate_fn import NumpyBatchCollateFn

    class KeepNumpy(NumpyBatchCollateFn):
        """Numpy stays numpy: images become tensors on the worker's device in ``_to_inputs``."""

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return batch

    return KeepNumpy()


@torch.no_grad()
def _predict(model, prep, shard, cfg: TrainConfig, device) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of a whole split: each rank scores its shard, then all ranks gather them."""
    import torch.distributed as dist

    model.eval()
    probs, labels = [], []
    for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
            logits = model(**_to_inputs(batch, prep, device))
        probs.append(torch.softmax(logits.float(), -1).cpu().numpy())
        # a copy: the batch's arrays are views of its block in the object store, and a kept view pins the block
        labels.append(batch["label"].copy())
    local = (
        np.concatenate(probs) if probs else np.zeros((0, 6), np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
    )
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])


def _save_checkpoint(
    folder: str, cfg: TrainConfig, train_model, optimizer, unwrapped, epoch: int, history, threshold, rank: int
) -> None:
    from rfnet.checkpoint import save

    if cfg.strategy == "deepspeed":
        # Every rank writes its ZeRO optimizer shard (collective); rank 0 also writes the module states.
        train_model.save_checkpoint(os.path.join(folder, "deepspeed"), tag="last", client_state={"epoch": epoch})
    elif rank == 0:
        torch.save(
            {"model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            os.path.join(folder, "train_state.pt"),
        )
    if rank == 0:
        save(unwrapped, os.path.join(folder, "rfnet"), threshold=threshold)
        with open(os.path.join(folder, "history.json"), "w") as f:
            json.dump(history, f)


def _resume(cfg: TrainConfig, train_model, optimizer, unwrapped) -> tuple[int, list]:
    """Load the last Ray Train checkpoint, if any; returns (first epoch to run, history so far)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        if cfg.strategy == "deepspeed":
            _, client = train_model.load_checkpoint(os.path.join(d, "deepspeed"), tag="last")
            epoch = client["epoch"]
        else:
            state = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)
            unwrapped.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            epoch = state["epoch"]
        with open(os.path.join(d, "history.json")) as f:
            history = json.load(f)
    logger.info("resumed from %s after epoch %d", checkpoint.path, epoch)
    return epoch + 1, history


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The per-worker recipe: setup -> resume -> (train, evaluate, checkpoint) per epoch -> test."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/adloop/torch_extensions"))
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from rfnet.checkpoint import build, load_weights
    from rfnet.metrics import calibrate_threshold, evaluate

    cfg = TrainConfig.from_dict(config)
    _quiet_ray_data()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()

    # --- setup
    model, prep = build(cfg.model, seed=cfg.seed)  # same init on every rank
    if cfg.init_from:  # fine-tuning: every rank starts from the same trained weights (a resume overrides them)
        load_weights(model, cfg.init_from)
    assert all(p.dtype == torch.float32 for p in model.parameters()), "trainable weights must stay fp32"
    train_model, optimizer, step, unwrapped = _setup_strategy(model, cfg)
    start_epoch, history = _resume(cfg, train_model, optimizer, unwrapped)
    train_shard = ray.train.get_dataset_shard("train")
    val, test = ray.train.get_dataset_shard("val"), ray.train.get_dataset_shard("test")
    if rank == 0 and start_epoch == 0:
        logger.info(
            "***** Running RFNet training ***** strategy=%s%s workers=%d batch/worker=%d global batch=%d epochs=%d "
            "lr=%g (/10 from epoch %d) modalities=%s trainable params=%d init=%s",
            cfg.strategy, f" (ZeRO-{cfg.zero_stage})" if cfg.strategy == "deepspeed" else "", world,
            cfg.batch_size, cfg.batch_size * world, cfg.epochs, cfg.lr, cfg.lr_drop_epoch,
            ",".join(cfg.model.modalities), sum(p.numel() for p in model.parameters() if p.requires_grad),
            cfg.init_from or "random",
        )  # fmt: skip

    # --- loop
    threshold = 0.5
    flips = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # each rank mirrors its own examples
    for epoch in range(start_epoch, cfg.epochs):
        lr = cfg.lr * (0.1 if epoch >= cfg.lr_drop_epoch else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_model.train()
        seen, loss_sum, t0 = 0, 0.0, time.perf_counter()
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            collate_fn=_collate(),
            drop_last=True,  # equal step counts on every rank, or the all-reduce would wait forever
            local_shuffle_buffer_size=4 * cfg.batch_size,
            local_shuffle_seed=cfg.seed + epoch,
        )
        for i, batch in enumerate(batches):
            if cfg.max_steps_per_epoch is not None and i >= cfg.max_steps_per_epoch:
                break
            inputs = _to_inputs(batch, prep, device)
            if cfg.hflip:
                inputs = mirror_some(inputs, flips)
            labels = torch.tensor(batch["label"], device=device)
            with torch.autocast(
                device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16" and cfg.strategy == "ddp"
            ):
                logits = train_model(**inputs)
            loss = F.cross_entropy(logits.float(), labels)
            step(loss)
            seen += len(labels)
            loss_sum += loss.detach().item() * len(labels)
        elapsed = time.perf_counter() - t0
        throughput = torch.tensor([seen / max(elapsed, 1e-9)])
        if dist.is_initialized():
            dist.all_reduce(throughput)  # global samples/s = sum of per-worker rates (they run in parallel)

        # --- evaluate (val), pick the threshold, checkpoint
        probs, labels = _predict(unwrapped, prep, val, cfg, device)
        calibrated = None
        if cfg.target_precision is not None:
            calibrated = calibrate_threshold(probs[:, 0], labels == 0, cfg.target_precision)
            if calibrated is None and rank == 0:
                logger.warning("epoch %d: no threshold reaches %.0f%% precision on Available in val; it stays 0.5",
                               epoch, 100 * cfg.target_precision)  # fmt: skip
        threshold = 0.5 if calibrated is None else calibrated
        val_metrics = evaluate(probs, labels, threshold)
        history.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": loss_sum / max(seen, 1),
                "train_samples_per_s": float(throughput),
                "val_ap": val_metrics["ap"],
                "val_f1": val_metrics["f1"],
                "val_accuracy": val_metrics["accuracy"],
                "threshold": threshold,
                # False: no threshold reached target_precision on val (or none was asked for); 0.5 is kept
                "threshold_calibrated": calibrated is not None,
            }
        )
        metrics = {
            "epoch": epoch,
            "start_epoch": start_epoch,
            "train_samples_per_s": float(throughput),
            "val": val_metrics,
            "history": history,
        }
        if epoch == cfg.epochs - 1:  # --- test: the held-out split, once, with the final model and val threshold
            probs, labels = _predict(unwrapped, prep, test, cfg, device)
            metrics["test"] = evaluate(probs, labels, threshold)
        with tempfile.TemporaryDirectory() as tmp:
            _save_checkpoint(tmp, cfg, train_model, optimizer, unwrapped, epoch, history, threshold, rank)
            if dist.is_initialized():
                dist.barrier()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if rank == 0:
            logger.info("epoch %d: %s", epoch, history[-1])
