"""``adloop train-rfnet`` / ``python -m jobs.train_rfnet``: train RFNet under Ray Train (DDP or DeepSpeed).

Examples::

    adloop synth rf1m --n 2000 --output data/synth --seed 0
    python -m jobs.train_rfnet --data data/synth --output runs/rfnet --strategy deepspeed --zero-stage 2 --workers 2
    ray job submit --working-dir . -- python -m jobs.train_rfnet --data /abs/data/synth --output /abs/runs/rfnet

Without ``RAY_ADDRESS`` a local Ray starts; under ``ray job submit`` the job joins that cluster. Running the
same command again (same ``--output`` and ``--name``) resumes from the last checkpoint. Writes
``<output>/rfnet/`` (checkpoint folder for ``rfnet.load`` / ``rfnet.Scorer``) and ``<output>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs import args as opts
from jobs.args import add, job_parser, parse, write_resolved_config
from rfnet.config import MODALITIES, PRESET_NAMES, preset


def _parser() -> argparse.ArgumentParser:
    p = job_parser("adloop train-rfnet", __doc__)
    add(p, "--data", required=True, help="RF1M folder or .parquet/.jsonl manifest")
    opts.OUTPUT.add(p, required=True)
    add(p, "--name", default="rfnet", help="run name; the same --output and --name resume")
    add(p, "--preset", default="tiny", choices=PRESET_NAMES, help="RFNet architecture preset")
    add(p, "--image-size", type=int, help="override the preset's image size in px (default: the preset's)")
    add(p, "--modalities", default=",".join(MODALITIES), help=f"comma list from {','.join(MODALITIES)}")
    add(p, "--image-encoder", help="local transformers ResNet folder to start from")
    add(p, "--text-encoder", help="local transformers RoBERTa folder to start from")
    add(p, "--tokenizer", help="local tokenizer folder (default: the preset's)")
    for option in (opts.STRATEGY, opts.ZERO_STAGE, opts.WORKERS):
        option.add(p)
    add(p, "--cpus-per-worker", type=int, default=1, help="CPUs reserved per worker (also its torch thread count)")
    opts.GPU.add(p)
    opts.DTYPE.add(p)
    add(p, "--epochs", type=int, default=10, help="epochs; the lr drops 10x halfway")
    add(p, "--batch-size", type=int, default=32, help="training examples per worker per step")
    add(p, "--lr", type=float, default=1e-4, help="AdamW learning rate before the drop")
    add(p, "--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    add(p, "--maps", default="dataset", choices=("dataset", "compute"), help="depth/saliency source")
    opts.DEPTH.add(p)
    opts.SALIENCY.add(p)
    add(p, "--max-steps-per-epoch", type=int, help="cap on optimizer steps per epoch (default: no cap)")
    add(p, "--max-failures", type=int, default=0, help="worker failures Ray Train retries from a checkpoint")
    opts.SEED.add(p)
    return p


def config_from_args(args: argparse.Namespace):
    from rfnet.train import TrainConfig

    model = preset(args.preset)
    changes = {"modalities": tuple(m for m in args.modalities.split(",") if m)}
    if args.image_size:
        changes["image_size"] = args.image_size
    if args.image_encoder:
        changes["image_encoder_path"] = args.image_encoder
    if args.text_encoder:
        changes["text_encoder_path"] = args.text_encoder
    if args.tokenizer:
        changes["tokenizer"] = args.tokenizer
    return TrainConfig(
        data=args.data, output=args.output, name=args.name, model=model.replace(**changes), strategy=args.strategy,
        zero_stage=args.zero_stage, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        use_gpu=args.gpu, dtype=args.dtype, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, maps=args.maps, depth=args.depth, saliency=args.saliency,
        max_steps_per_epoch=args.max_steps_per_epoch, max_failures=args.max_failures, seed=args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rfnet.data import DatasetError
    from rfnet.train import fit

    write_resolved_config(args, args.output)
    try:
        metrics = fit(config_from_args(args))
    except DatasetError as e:
        print(f"adloop train-rfnet: {e}", file=sys.stderr)
        return 2
    test = metrics["test"]
    print(
        json.dumps({k: test[k] for k in ("n", "ap", "precision", "recall", "f1", "accuracy")} | {"out": args.output})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
