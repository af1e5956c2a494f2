"""``adloop train-maps`` / ``python -m jobs.train_maps``: train the toy depth and saliency models under Ray Train.

Examples::

    adloop synth rf1m --n 4000 --out data/maps_train --seed 1 --size 128
    adloop train-maps --data data/maps_train --out runs/maps --eval-seed 2
    cp -r runs/maps/depth runs/maps/saliency rfnet/assets/toy/     # what --depth toy / --saliency toy load

The models learn the renderer's own depth and saliency maps from the rendered image (see
``rfnet/maps_train.py``). Writes ``<out>/depth/`` (a transformers folder for ``load_depth``),
``<out>/saliency/`` (for ``load_saliency``) and ``<out>/metrics.json`` (per-epoch losses, held-out depth
RMSE and saliency F-measure on renders of ``--eval-seed``, which must not be the training set's seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adloop train-maps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True, help="RF1M folder (or manifest) with depth/ and saliency/ maps")
    p.add_argument("--out", required=True, help="output folder (depth/, saliency/, metrics.json)")
    p.add_argument("--models", default="depth,saliency", help="comma list from depth,saliency")
    p.add_argument("--depth-arch", default="toy", choices=["toy", "tiny"], help="depth model sizes")
    p.add_argument("--saliency-arch", default="toy", choices=["toy", "tiny"], help="saliency model sizes")
    p.add_argument("--image-size", type=int, default=128, help="training resolution of images and maps")
    p.add_argument("--max-examples", type=int, help="use only the first N examples")
    p.add_argument("--eval-seed", type=int, default=2, help="synth seed of the held-out renders")
    p.add_argument("--eval-images", type=int, default=400, help="held-out renders (0: no evaluation)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="maps", help="Ray Train run name")
    return p


def config_from_args(args: argparse.Namespace):
    from rfnet.maps_train import MapsTrainConfig, depth_arch, saliency_arch

    return MapsTrainConfig(
        data=args.data, output=args.out, models=tuple(m for m in args.models.split(",") if m),
        depth_model=depth_arch(args.depth_arch), saliency_model=saliency_arch(args.saliency_arch),
        image_size=args.image_size, max_examples=args.max_examples, eval_seed=args.eval_seed,
        eval_images=args.eval_images, num_workers=args.workers, cpus_per_worker=args.cpus_per_worker,
        use_gpu=args.gpu, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_steps_per_epoch=args.max_steps_per_epoch, seed=args.seed, name=args.name,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from rfnet.data import DatasetError
    from rfnet.maps_train import fit_maps

    try:
        cfg = config_from_args(args)
        metrics = fit_maps(cfg)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"adloop train-maps: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"eval": metrics["eval"], "wall_s": round(metrics["wall_s"], 1), "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
