"""``adloop train-rfnet`` / ``python -m jobs.train_rfnet``: train RFNet under Ray Train (DDP or DeepSpeed).

Examples::

    adloop synth rf1m --n 2000 --out data/synth --seed 0
    python -m jobs.train_rfnet --data data/synth --out runs/rfnet --strategy deepspeed --zero-stage 2 --workers 2
    ray job submit --working-dir . -- python -m jobs.train_rfnet --data /abs/data/synth --out /abs/runs/rfnet

Without ``RAY_ADDRESS`` a local Ray starts; under ``ray job submit`` the job joins that cluster. Running the
same command again (same ``--out`` and ``--name``) resumes from the last checkpoint. Writes
``<out>/rfnet/`` (checkpoint folder for ``rfnet.load`` / ``rfnet.Scorer``) and ``<out>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rfnet.config import MODALITIES, PRESET_NAMES, preset


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adloop train-rfnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        help="RF1M folder or .parquet/.jsonl manifest; repeat to merge several (e.g. a review export and RF1M)",
    )
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="fine-tune this RFNet checkpoint folder (its architecture; --preset and --image-size are ignored); "
        "the threshold is calibrated again on the new validation split",
    )
    p.add_argument("--out", required=True, help="output folder (checkpoints, rfnet/, metrics.json)")
    p.add_argument("--name", default="rfnet", help="run name; same --out and --name resumes")
    p.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="RFNet architecture preset")
    p.add_argument("--image-size", type=int, help="override the preset's image size")
    p.add_argument("--modalities", default=",".join(MODALITIES), help=f"comma list from {','.join(MODALITIES)}")
    p.add_argument("--image-encoder", help="local transformers ResNet folder to start from")
    p.add_argument("--text-encoder", help="local transformers RoBERTa folder to start from")
    p.add_argument("--tokenizer", help="local tokenizer folder (default: the preset's)")
    p.add_argument("--strategy", default="ddp", choices=["ddp", "deepspeed"])
    p.add_argument("--zero-stage", type=int, default=2, help="DeepSpeed ZeRO stage (0-2)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--maps", default="dataset", choices=["dataset", "compute"], help="depth/saliency source")
    p.add_argument("--depth", default="tiny", help="depth model for --maps compute")
    p.add_argument("--saliency", default="tiny", help="saliency model for --maps compute")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--max-failures", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
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
        data=args.data[0] if len(args.data) == 1 else args.data, output=args.out, init_from=args.init_from,
        name=args.name, model=model.replace(**changes), strategy=args.strategy,
        zero_stage=args.zero_stage, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        use_gpu=args.gpu, dtype=args.dtype, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, maps=args.maps, depth=args.depth, saliency=args.saliency,
        max_steps_per_epoch=args.max_steps_per_epoch, max_failures=args.max_failures, seed=args.seed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rfnet.data import DatasetError
    from rfnet.train import fit

    try:
        metrics = fit(config_from_args(args))
    except (DatasetError, FileNotFoundError) as e:
        print(f"adloop train-rfnet: {e}", file=sys.stderr)
        return 2
    test = metrics["test"]
    print(json.dumps({k: test[k] for k in ("n", "ap", "precision", "recall", "f1", "accuracy")} | {"out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
