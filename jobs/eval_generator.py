"""``adloop eval-generator``: how often a generator's first attempt is accepted, and how varied it is.

    adloop eval-generator --products DIR_OR_MANIFEST --rfnet RFNET_CHECKPOINT [--controlnet DIR] \\
        [--size 128 --steps 10] [--seeds 3] [--run-seed 0] [--measure-attempts 5] [--output eval.json]

One generation per product per seed, with the seeds ``adloop refresh --seed RUN_SEED`` would use, judged by
RFNet: available rate, 1/p, measured Recurrent Generation attempts (``--measure-attempts``) and diversity
across seeds (see ``rfft.evaluate``). The inspector (``rfnet.inspector``) judges the same first attempts,
so its available rate stands beside RFNet's, as the paper's "Human Ava" beside "Ava"; ``--rfnet inspector``
makes it the only judge. The generator is built by the engine's own factory, so a ControlNet
folder written by ``adloop train-rfft`` is evaluated exactly as the engine would run it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs import args as opts
from jobs.args import add, generator_config, job_parser
from jobs.config import parse

logger = logging.getLogger("adloop.eval_generator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop eval-generator", __doc__)
    add(p, "--products", required=True, help="held-out products: folder of cutouts or a manifest")
    opts.LIMIT.add(p)
    for option in (opts.RFNET, opts.THRESHOLD, opts.DEPTH, opts.SALIENCY):
        option.add(p)
    g = p.add_argument_group("generator")
    for option in (opts.BASE_MODEL, opts.CONTROLNET, opts.SIZE, opts.STEPS, opts.GUIDANCE_SCALE, opts.DEVICE):
        option.add(g)
    add(p, "--seeds", type=int, default=3, help="seeds per product for the diversity figure")
    add(p, "--run-seed", type=int, default=0, help="the run seed whose attempt seeds are used (as refresh --seed)")
    add(
        p,
        "--measure-attempts",
        type=int,
        default=0,
        help="also run Recurrent Generation up to this many attempts (0 = no) [old spelling: --max-attempts]",
    )
    opts.OUTPUT.add(p)
    args, rest = parse(p, argv, known=True)
    # The old spelling of --measure-attempts; it is not an alias because refresh's --max-attempts is a budget.
    if rest[:1] == ["--max-attempts"] and len(rest) >= 2:
        args.measure_attempts, rest = int(rest[1]), rest[2:]
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from engine.models import build_pipeline
    from rfft.evaluate import Evaluator, judges, load_products

    gen = generator_config(args)
    pipe = build_pipeline(gen)
    scorer, inspector = judges(args.rfnet, str(pipe.device), args.threshold, args.depth, args.saliency)
    products = load_products(args.products, limit=args.limit)
    evaluator = Evaluator(products, gen, scorer, args.run_seed, args.seeds, inspector=inspector)
    metrics = evaluator(pipe, pipe.controlnet, max_attempts=args.measure_attempts)
    metrics["controlnet"] = args.controlnet or f"{args.base_model}-controlnet"
    text = json.dumps(metrics, indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
