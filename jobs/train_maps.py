"""``adloop train-maps`` / ``python -m jobs.train_maps``: train the toy depth and saliency models under Ray Train.

Examples::

    adloop synth rf1m --n 4000 --output data/maps_train --seed 1 --size 128
    adloop train-maps --data data/maps_train --output runs/maps --eval-seed 2
    cp -r runs/maps/depth runs/maps/saliency rfnet/assets/toy/     # what --depth toy / --saliency toy load

The models learn the renderer's own depth and saliency maps from the rendered image (see
``rfnet/maps_train.py``). Writes ``<output>/depth/`` (a transformers folder for ``load_depth``),
``<output>/saliency/`` (for ``load_saliency``) and ``<output>/metrics.json`` (per-epoch losses, held-out depth
RMSE and saliency F-measure on renders of ``--eval-seed``, which must not be the training set's seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs import args as opts
from jobs.args import add, job_parser, one_value
from jobs.config import parse

# The recipe's defaults where a flag is shared with other training jobs (shown in --help; None takes them).
_RECIPE = {"name": "maps", "epochs": 4, "batch_size": 16, "lr": 2e-3, "image_size": 128}


def _parser() -> argparse.ArgumentParser:
    p = job_parser("adloop train-maps", __doc__)
    opts.DATA.add(p, required=True)
    opts.OUTPUT.add(p, required=True)
    add(p, "--models", default="depth,saliency", help="comma list from depth,saliency")
    add(p, "--depth-arch", default="toy", choices=("toy", "tiny"), help="depth model sizes")
    add(p, "--saliency-arch", default="toy", choices=("toy", "tiny"), help="saliency model sizes")
    opts.IMAGE_SIZE.add(p, recipe_default=f"{_RECIPE['image_size']}, the resolution of images and maps")
    add(p, "--max-examples", type=int, help="use only the first N examples (default: all)")
    add(p, "--eval-seed", type=int, default=2, help="synth seed of the held-out renders")
    add(p, "--eval-images", type=int, default=400, help="held-out renders (0: no evaluation)")
    for option in (opts.WORKERS, opts.CPUS_PER_WORKER, opts.GPU):
        option.add(p)
    opts.EPOCHS.add(p, recipe_default=_RECIPE["epochs"])
    opts.BATCH_SIZE.add(p, recipe_default=_RECIPE["batch_size"])
    opts.LR.add(p, recipe_default=f"{_RECIPE['lr']:g}")
    opts.MAX_STEPS_PER_EPOCH.add(p)
    opts.SEED.add(p)
    opts.RUN_NAME.add(p, recipe_default=_RECIPE["name"])
    return p


def config_from_args(args: argparse.Namespace):
    from rfnet.maps_train import MapsTrainConfig, depth_arch, saliency_arch

    recipe = {k: getattr(args, k) for k in _RECIPE}
    recipe = {k: v if v is not None else _RECIPE[k] for k, v in recipe.items()}
    return MapsTrainConfig(
        data=one_value(args.data, "--data"), output=args.output, models=tuple(m for m in args.models.split(",") if m),
        depth_model=depth_arch(args.depth_arch), saliency_model=saliency_arch(args.saliency_arch),
        image_size=recipe["image_size"], max_examples=args.max_examples, eval_seed=args.eval_seed,
        eval_images=args.eval_images, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        use_gpu=args.gpu, epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
        max_steps_per_epoch=args.max_steps_per_epoch, seed=args.seed, name=recipe["name"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rfnet.data import DatasetError
    from rfnet.maps_train import fit_maps

    try:
        cfg = config_from_args(args)
        metrics = fit_maps(cfg)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"adloop train-maps: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"eval": metrics["eval"], "wall_s": round(metrics["wall_s"], 1), "out": args.output}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
