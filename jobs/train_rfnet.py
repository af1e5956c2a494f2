"""``adloop train-rfnet`` / ``python -m jobs.train_rfnet``: train RFNet under Ray Train (DDP or DeepSpeed).

Examples::

    adloop synth rf1m --n 2000 --output data/synth --seed 0
    python -m jobs.train_rfnet --data data/synth --output runs/rfnet --strategy deepspeed --zero-stage 2 --workers 2
    ray job submit --working-dir . -- python -m jobs.train_rfnet --data /abs/data/synth --output /abs/runs/rfnet

Without ``RAY_ADDRESS`` a local Ray starts; under ``ray job submit`` the job joins that cluster. Running the
same command again (same ``--output`` and ``--name``) resumes from the last checkpoint. Writes
``<output>/rfnet/`` (checkpoint folder for ``rfnet.load`` / ``rfnet.Scorer``), ``<output>/metrics.json`` and
``<output>/splits/`` (the product-level split as Parquet shards of example rows, which every epoch streams and
decodes in Ray Data CPU tasks beside the workers: the local Ray gets ``--workers`` x ``--cpus-per-worker`` +
``--data-cpus`` CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cluster.configs import field_default
from jobs import args as opts
from jobs.args import add, job_parser
from jobs.config import parse, write_resolved_config
from rfnet.config import DEFAULT_PRESET, MODALITIES, PRESET_NAMES, preset
from rfnet.train_config import MAPS, TrainConfig


def _parser() -> argparse.ArgumentParser:
    p = job_parser("adloop train-rfnet", __doc__)
    opts.DATA.add(p, required=True)
    add(
        p,
        "--init-from",
        metavar="CHECKPOINT",
        help="fine-tune this RFNet checkpoint folder (its architecture; --preset and --image-size are ignored); "
        "the threshold is calibrated again on the new validation split",
    )
    opts.OUTPUT.add(p, required=True)
    opts.RUN_NAME.add(p, recipe_default=field_default(TrainConfig, "name"))
    add(p, "--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES, help="RFNet architecture preset")
    opts.IMAGE_SIZE.add(
        p, recipe_default="the preset's; with --image-encoder, the size in its preprocessor_config.json"
    )
    add(p, "--modalities", default=",".join(MODALITIES), help=f"comma list from {','.join(MODALITIES)}")
    add(
        p,
        "--image-encoder",
        help="local transformers ResNet folder to start from (its preprocessor_config.json "
        "sets the input normalisation, and the size unless --image-size does)",
    )
    add(p, "--text-encoder", help="local transformers BERT, RoBERTa or XLM-R folder to start from")
    add(p, "--tokenizer", help="local tokenizer folder (default: the preset's)")
    for option in (opts.STRATEGY, opts.ZERO_STAGE, opts.WORKERS):
        option.add(p)
    opts.CPUS_PER_WORKER.add(p)
    add(
        p,
        "--data-cpus",
        type=float,
        default=field_default(TrainConfig, "data_cpus"),
        help="CPUs for Ray Data's decode tasks beside the workers' (a local Ray gets workers x cpus + these)",
    )
    opts.GPU.add(p)
    opts.DTYPE.add(p)
    opts.EPOCHS.add(p, recipe_default=f"{field_default(TrainConfig, 'epochs')}; the lr drops 10x halfway")
    opts.BATCH_SIZE.add(p, recipe_default=field_default(TrainConfig, "batch_size"))
    opts.LR.add(p, recipe_default=f"{field_default(TrainConfig, 'lr'):g}, before the drop")
    add(p, "--weight-decay", type=float, default=field_default(TrainConfig, "weight_decay"), help="AdamW weight decay")
    add(
        p,
        "--hflip",
        action="store_true",
        help="mirror each training example left-right with probability 0.5 (all of its images together)",
    )
    add(p, "--maps", default=field_default(TrainConfig, "maps"), choices=MAPS, help="depth/saliency source")
    opts.DEPTH.add(p)
    opts.SALIENCY.add(p)
    opts.MAX_STEPS_PER_EPOCH.add(p)
    add(
        p,
        "--max-failures",
        type=int,
        default=field_default(TrainConfig, "max_failures"),
        help="worker failures Ray Train retries from a checkpoint",
    )
    opts.SEED.add(p)
    return p


def config_from_args(args: argparse.Namespace):
    model = preset(args.preset)
    changes = {"modalities": tuple(m for m in args.modalities.split(",") if m)}
    if args.image_size:
        changes["image_size"] = args.image_size
    if args.image_encoder:
        changes["image_encoder_path"] = args.image_encoder
        changes.setdefault("image_size", None)  # the encoder's own
    if args.text_encoder:
        changes["text_encoder_path"] = args.text_encoder
    if args.tokenizer:
        changes["tokenizer"] = args.tokenizer
    recipe = {"name": args.name, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    return TrainConfig(
        data=args.data[0] if len(args.data) == 1 else args.data, output=args.output, init_from=args.init_from,
        model=model.replace(**changes), strategy=args.strategy,
        zero_stage=args.zero_stage, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        data_cpus=args.data_cpus,
        use_gpu=args.gpu, dtype=args.dtype, weight_decay=args.weight_decay, hflip=args.hflip, maps=args.maps,
        depth=args.depth, saliency=args.saliency, max_steps_per_epoch=args.max_steps_per_epoch, max_failures=args.max_failures,
        seed=args.seed, **{k: v for k, v in recipe.items() if v is not None},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rfnet.data import DatasetError
    from rfnet.train import fit

    write_resolved_config(args, args.output)
    try:
        metrics = fit(config_from_args(args))
    except (DatasetError, FileNotFoundError, ValueError) as e:  # bad data, paths, configs or weights: all named
        print(f"adloop train-rfnet: {e}", file=sys.stderr)
        return 2
    test = metrics["test"]
    print(
        json.dumps({k: test[k] for k in ("n", "ap", "precision", "recall", "f1", "accuracy")} | {"out": args.output})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
