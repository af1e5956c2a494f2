"""``adloop eval-generator``: how often a generator's first attempt is accepted, and how varied it is.

    adloop eval-generator --products DIR_OR_MANIFEST --rfnet RFNET_CHECKPOINT [--controlnet DIR] \\
        [--size 64 --steps 10] [--seeds 3] [--run-seed 0] [--max-attempts 5] [--output eval.json]

One generation per product per seed, with the seeds ``adloop refresh --seed RUN_SEED`` would use, judged by
RFNet: available rate, 1/p, measured Recurrent Generation attempts (``--max-attempts``) and diversity
across seeds (see ``rfft.evaluate``). The generator is built by the engine's own factory, so a ControlNet
folder written by ``adloop train-rfft`` is evaluated exactly as the engine would run it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from engine.config import GeneratorConfig
from jobs.args import job_parser

logger = logging.getLogger("adloop.eval_generator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop eval-generator", __doc__)
    p.add_argument("--products", required=True, help="held-out products: folder of cutouts or a manifest")
    p.add_argument("--limit", type=int, default=None, help="use at most this many products")
    p.add_argument("--rfnet", default="tiny", help="RFNet checkpoint folder (the judge)")
    p.add_argument("--threshold", type=float, default=None, help="P(Available) threshold (default: checkpoint's)")
    p.add_argument("--depth", default="tiny", help="depth model for RFNet: tiny | paper | folder")
    p.add_argument("--saliency", default="tiny", help="saliency model for RFNet: tiny | paper | folder")
    p.add_argument("--base-model", default="tiny", help="tiny | sd15 (random-weight presets) | diffusers folder")
    p.add_argument("--controlnet", default=None, help="ControlNet folder (default: the preset's own)")
    p.add_argument("--size", type=int, default=64, help="canvas side in px")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seeds", type=int, default=3, help="seeds per product for the diversity figure")
    p.add_argument(
        "--run-seed", type=int, default=0, help="the run seed whose attempt seeds are used (as refresh --seed)"
    )
    p.add_argument(
        "--max-attempts", type=int, default=0, help="also run Recurrent Generation up to this many attempts (0 = no)"
    )
    p.add_argument("--output", default=None, help="write the metrics here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from engine.models import build_pipeline
    from rfft.evaluate import Evaluator, load_products
    from rfnet import Scorer

    gen = GeneratorConfig(
        base_model=args.base_model,
        controlnet=args.controlnet,
        size=args.size,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        device=args.device,
    )
    pipe = build_pipeline(gen)
    scorer = Scorer(
        args.rfnet, device=str(pipe.device), threshold=args.threshold, depth=args.depth, saliency=args.saliency
    )
    evaluator = Evaluator(load_products(args.products, limit=args.limit), gen, scorer, args.run_seed, args.seeds)
    metrics = evaluator(pipe, pipe.controlnet, max_attempts=args.max_attempts)
    metrics["controlnet"] = args.controlnet or f"{args.base_model}-controlnet"
    text = json.dumps(metrics, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
