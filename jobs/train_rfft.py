"""``adloop train-rfft``: reward fine-tuning of the ControlNet with RFNet feedback (Ray Train).

    adloop train-rfft --train-products DIR_OR_MANIFEST --eval-products DIR_OR_MANIFEST \\
        --rfnet RFNET_CHECKPOINT --output OUT [--regulariser cc|kl|none] [--beta 1] [--max-steps 100] \\
        [--strategy ddp|deepspeed --zero-stage 2] [--workers 2] [--set field=value ...]

Writes under OUT:

- ``controlnet/``: the fine-tuned ControlNet as a diffusers folder (``adloop refresh --controlnet
  OUT/controlnet`` loads it unchanged);
- ``train.jsonl`` (one line per optimizer step: loss, feedback, regulariser, reward, grad norm) and
  ``eval.jsonl`` (held-out available rate, attempts, diversity, and the inspector's available rate on the
  same images, at step 0, every ``eval_every`` steps and at the end); ``summary.json`` (before/after);
  ``config.json`` (the resolved RFFTConfig);
- ``ray/``: Ray Train's run folder with its checkpoints. Running the same command again with the same
  OUT resumes from the last checkpoint (Ray Train restores a run of the same name and storage path).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import time

from jobs import args as opts
from jobs.args import add, generator_config, job_parser
from jobs.config import parse, write_resolved_config
from rfft.config import REGULARISERS, REWARDS, RFFTConfig

_R = RFFTConfig  # its class attributes are the field defaults

logger = logging.getLogger("adloop.train_rfft")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop train-rfft", __doc__)
    add(p, "--train-products", required=True, help="folder of product cutouts or a manifest")
    add(p, "--eval-products", help="held-out products (default: no evaluation)")
    add(p, "--limit-train", type=int, help="use at most this many training products (default: all)")
    add(p, "--limit-eval", type=int, help="use at most this many held-out products (default: all)")
    opts.OUTPUT.add(p, required=True)
    for option in (opts.RFNET, opts.THRESHOLD, opts.DEPTH, opts.SALIENCY):
        option.add(p)
    add(
        p,
        "--reward",
        default=_R.reward,
        choices=REWARDS,
        help="rfnet: log P(Available); brightness: a toy for smoke tests",
    )
    add(
        p,
        "--regulariser",
        default=_R.regulariser,
        choices=REGULARISERS,
        help="cc: Consistent Condition; kl: distance to the reference prediction; none: plain reward feedback",
    )
    add(p, "--beta", type=float, default=_R.beta, help="regulariser weight")
    add(p, "--max-steps", type=int, help=f"optimizer steps in total, across resumes (default: {_R.max_steps})")
    for option in (opts.STRATEGY, opts.ZERO_STAGE, opts.WORKERS, opts.GPU):
        option.add(p)
    g = p.add_argument_group("generator (rollouts and evaluation)")
    for option in (opts.BASE_MODEL, opts.CONTROLNET, opts.SIZE, opts.STEPS, opts.GUIDANCE_SCALE):
        option.add(g)
    add(
        p,
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other RFFTConfig field (JSON value), e.g. --set lr=1e-4 --set grad_accum=2",
    )
    args = parse(p, argv)
    return _old_steps_spelling(args, list(argv if argv is not None else sys.argv[1:]))


def _old_steps_spelling(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Until this release --steps meant optimizer steps here and --gen-steps denoising steps; now --steps
    means denoising steps as in every job, and --max-steps optimizer steps. A command line written the old
    way (--gen-steps given, which --steps now aliases) still means what it meant."""
    given = [a.split("=")[0] for a in argv]
    if "--gen-steps" in given and "--steps" in given and "--max-steps" not in given:
        position = {flag: max(i for i, a in enumerate(given) if a == flag) for flag in ("--steps", "--gen-steps")}
        old_steps = argv[position["--steps"]].partition("=")[2] or argv[position["--steps"] + 1]
        old_gen = argv[position["--gen-steps"]].partition("=")[2] or argv[position["--gen-steps"] + 1]
        args.max_steps, args.steps = int(old_steps), int(old_gen)
        print("adloop train-rfft: note: --steps N --gen-steps M is now --max-steps N --steps M", file=sys.stderr)
    elif "--steps" in given and "--max-steps" not in given:
        print(
            "adloop train-rfft: note: --steps now means denoising steps (as in every job); "
            "optimizer steps are --max-steps",
            file=sys.stderr,
        )
    return args


def build_config(args: argparse.Namespace) -> RFFTConfig:
    from engine.model_paths import checked_paths
    from engine.score import checked_scorer_paths

    fields: dict = {
        "generator": generator_config(args, device="cuda" if args.gpu else "cpu"),
        "reward": args.reward,
        "rfnet_checkpoint": args.rfnet,
        "threshold": args.threshold,
        "depth": args.depth,
        "saliency": args.saliency,
        "regulariser": args.regulariser,
        "beta": args.beta,
        "max_steps": args.max_steps or _R.max_steps,
        "strategy": args.strategy,
        "zero_stage": args.zero_stage,
        "num_workers": args.workers,
        "use_gpu": args.gpu,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    from rfnet.config import INSPECTOR

    if args.rfnet == INSPECTOR:
        raise SystemExit("--rfnet inspector: RFFT needs a differentiable reward, an RFNet checkpoint; the inspector "
                         "judges results afterwards (adloop eval-generator reports it beside RFNet)")  # fmt: skip
    # Checked here, and absolute: Ray Train's workers do not run in this directory.
    fields["generator"] = checked_paths(fields["generator"])
    fields["rfnet_checkpoint"], fields["depth"], fields["saliency"] = checked_scorer_paths(
        args.rfnet, args.depth, args.saliency
    )
    if "grad_window" not in fields:
        fields["grad_window"] = min(_R.grad_window, fields["generator"].steps)
    return RFFTConfig.from_dict(fields)


def _judges(checkpoint: str, threshold: float | None, depth: str, saliency: str, device):
    """RFNet, the judge, and the inspector beside it (the paper's Ava and Human Ava of the same images)."""
    from rfft.evaluate import judges

    return judges(checkpoint, str(device), threshold, depth, saliency)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from cluster.paths import ModelPathError

    try:
        cfg = build_config(args)
    except ModelPathError as err:
        raise SystemExit(f"adloop train-rfft: error: {err}") from None
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    write_resolved_config(args, out)

    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.runtime import init_ray
    from engine.prepare import PromptPolicy
    from rfft import rewards
    from rfft.evaluate import condition_rows, load_products
    from rfft.train import CONTROLNET_DIR, train_loop_per_worker

    train_products = load_products(args.train_products, limit=args.limit_train)
    eval_products = load_products(args.eval_products, limit=args.limit_eval) if args.eval_products else []
    overlap = {p.sku_id for p in train_products} & {p.sku_id for p in eval_products}
    if overlap:
        raise SystemExit(f"held-out products overlap the training products: {sorted(overlap)[:5]}")
    rows = condition_rows(train_products, cfg.generator.size, 1, PromptPolicy(run_seed=cfg.seed))
    if args.reward == "rfnet":
        reward_factory = rewards.rfnet_factory(cfg.rfnet_checkpoint, cfg.depth, cfg.saliency)
    else:
        reward_factory = rewards.brightness_factory
    judge_factory = (
        functools.partial(_judges, cfg.rfnet_checkpoint, cfg.threshold, cfg.depth, cfg.saliency)
        if eval_products
        else None
    )

    init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg,
            "reward_factory": reward_factory,
            "judge_factory": judge_factory,
            "eval_products": eval_products,
            "output_dir": out,
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name="rfft", storage_path=os.path.join(out, "ray"), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
        datasets={"train": ray.data.from_items(rows)},
    )
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    if result.checkpoint is None:
        raise SystemExit("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        dest = os.path.join(out, CONTROLNET_DIR)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(os.path.join(d, CONTROLNET_DIR), dest)
    summary = _summary(out, result.metrics, seconds)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: summary[k] for k in ("steps", "before", "after", "frozen_changed") if k in summary}))
    print(f"fine-tuned ControlNet -> {dest}")
    return 0


def _summary(out: str, final_metrics: dict, seconds: float) -> dict:
    evals = []
    path = os.path.join(out, "eval.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            evals = [json.loads(line) for line in f if line.strip()]
    return {
        "steps": final_metrics.get("step"),
        "wall_seconds": seconds,
        "before": evals[0] if evals else None,
        "after": evals[-1] if len(evals) > 1 else None,
        "frozen_changed": final_metrics.get("frozen_changed", ""),
    }


if __name__ == "__main__":
    sys.exit(main())
