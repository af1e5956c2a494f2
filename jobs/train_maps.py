"""``adloop train-maps`` / ``python -m jobs.train_maps``: train the toy depth and saliency models under Ray Train.

Examples::

    adloop synth rf1m --n 4000 --output data/maps_train --seed 1 --render-size 128
    adloop train-maps --data data/maps_train --output runs/maps --eval-seed 2
    cp -r runs/maps/depth runs/maps/saliency rfnet/assets/toy/     # what --depth toy / --saliency toy load

The models learn the renderer's own depth and saliency maps from the rendered image (see
``rfnet/maps_train.py``). Writes ``<output>/depth/`` (a transformers folder for ``load_depth``),
``<output>/saliency/`` (for ``load_saliency``) and ``<output>/metrics.json`` (per-epoch losses, held-out depth
RMSE and saliency F-measure on renders of ``--eval-seed``, which must not be the training set's seed) and
``<output>/config.yaml`` (the job's options, once it ends).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

from cluster.configs import field_default
from jobs import args as opts
from jobs.args import add, job_parser, one_value
from jobs.config import parse, write_resolved_config
from rfnet.maps_config import ARCHS, MODELS, MapsTrainConfig


def _parser() -> argparse.ArgumentParser:
    d = functools.partial(field_default, MapsTrainConfig)
    p = job_parser("adloop train-maps", __doc__)
    opts.DATA.add(p, required=True)
    opts.OUTPUT.add(p, required=True)
    add(p, "--models", default=",".join(d("models")), help=f"comma list from {','.join(MODELS)}")
    add(p, "--depth-arch", default=ARCHS[0], choices=ARCHS, help="depth model sizes")
    add(p, "--saliency-arch", default=ARCHS[0], choices=ARCHS, help="saliency model sizes")
    opts.IMAGE_SIZE.add(p, recipe_default=f"{d('image_size')}, the resolution of images and maps")
    add(p, "--max-examples", type=int, help="use only the first N examples (default: all)")
    add(p, "--eval-seed", type=int, default=d("eval_seed"), help="synth seed of the held-out renders")
    add(p, "--eval-images", type=int, default=d("eval_images"), help="held-out renders (0: no evaluation)")
    for option in (opts.WORKERS, opts.CPUS_PER_WORKER, opts.GPU):
        option.add(p)
    opts.EPOCHS.add(p, recipe_default=d("epochs"))
    opts.BATCH_SIZE.add(p, recipe_default=d("batch_size"))
    opts.LR.add(p, recipe_default=f"{d('lr'):g}")
    opts.MAX_STEPS_PER_EPOCH.add(p)
    opts.SEED.add(p)
    opts.RUN_NAME.add(p, recipe_default=d("name"))
    return p


def config_from_args(args: argparse.Namespace) -> MapsTrainConfig:
    from rfnet.maps_config import depth_arch, saliency_arch

    recipe = {k: getattr(args, k) for k in ("name", "epochs", "batch_size", "lr", "image_size")}
    return MapsTrainConfig(
        data=one_value(args.data, "--data"), output=args.output, models=tuple(m for m in args.models.split(",") if m),
        depth_model=depth_arch(args.depth_arch), saliency_model=saliency_arch(args.saliency_arch),
        max_examples=args.max_examples, eval_seed=args.eval_seed, eval_images=args.eval_images,
        num_workers=args.workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.gpu,
        max_steps_per_epoch=args.max_steps_per_epoch, seed=args.seed,
        **{k: v for k, v in recipe.items() if v is not None},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rfnet.data import DatasetError
    from rfnet.maps_train import fit_maps

    try:
        cfg = config_from_args(args)
        metrics = fit_maps(cfg)
        write_resolved_config(args, args.output)  # after fit: a set it refuses leaves no output
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"adloop train-maps: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"eval": metrics["eval"], "wall_s": round(metrics["wall_s"], 1), "out": args.output}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
