"""``adloop refresh``: the nightly catalog refresh (distributed Recurrent Generation on Ray Data).

Every input SKU ends with exactly one row in OUT/results: accepted (an image RFNet accepts),
needs_review (no accepted image within --max-attempts; the best one is kept) or failed (bad input,
with the reason). Rerunning with the same --output resumes: SKUs with a final row are skipped.

Runs on a local Ray by default; set RAY_ADDRESS (or use `ray job submit`) to run on a cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cluster.resources import ResourceConfig
from engine.config import RefreshConfig, ScorerConfig
from jobs import args as opts
from jobs.args import add, add_generator_args, conditioning_config, generator_config, job_parser
from jobs.config import parse, write_resolved_config

# The engine (Ray, diffusers, pyarrow) is imported only once the arguments are parsed, so --help is instant;
# the defaults come from its light config module.
_R = RefreshConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop refresh", __doc__)
    opts.INPUT.add(p, required=True)
    opts.OUTPUT.add(p, required=True)
    add_generator_args(p)
    s = p.add_argument_group("scoring and the feedback loop")
    for option in (opts.RFNET, opts.THRESHOLD, opts.DEPTH, opts.SALIENCY):
        option.add(s)
    add(s, "--max-attempts", type=int, default=_R.max_attempts, help="attempt budget per SKU")
    add(
        s,
        "--rotate-after",
        type=int,
        default=_R.rotate_after,
        help="next prompt template after this many failures (0 = never)",
    )
    r = p.add_argument_group("resources (default: derived from the cluster)")
    opts.RAY_ADDRESS.add(r)
    add(r, "--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    add(r, "--generators", type=int, help="generation actors")
    add(r, "--scorers", type=int, help="scoring actors")
    add(r, "--gpus-per-generator", type=float, help="GPUs per generation actor (fractions allowed)")
    add(r, "--gpus-per-scorer", type=float, help="GPUs per scoring actor (fractions allowed)")
    add(r, "--cpus-per-generator", type=float, help="CPUs per generation actor")
    add(r, "--cpus-per-scorer", type=float, help="CPUs per scoring actor")
    opts.GEN_BATCH_SIZE.add(r)
    add(
        r,
        "--score-batch-size",
        type=int,
        default=ResourceConfig.score_batch_size,
        help="candidates per scorer call",
    )
    add(
        r,
        "--round-retries",
        type=int,
        default=_R.round_retries,
        help="rerun a round that fails for a cluster reason (lost node, actor or object) over its SKUs not "
        "committed yet, up to this many times (0 = fail the job)",
    )
    add(p, "--no-progress", action="store_true", help="no live progress bar")
    return parse(p, argv)


def build_config(args: argparse.Namespace):
    """The job's ``engine.config.RefreshConfig`` from its parsed arguments."""
    gen = generator_config(args)
    return RefreshConfig(
        input=args.input,
        output=args.output,
        generator=gen,
        conditioning=conditioning_config(args, gen.size),
        scorer=ScorerConfig(
            rfnet=args.rfnet, threshold=args.threshold, depth=args.depth, saliency=args.saliency, device=args.device
        ),
        resources=ResourceConfig(
            generators=args.generators,
            scorers=args.scorers,
            gpus_per_generator=args.gpus_per_generator,
            gpus_per_scorer=args.gpus_per_scorer,
            cpus_per_generator=args.cpus_per_generator,
            cpus_per_scorer=args.cpus_per_scorer,
            gen_batch_size=args.gen_batch_size,
            score_batch_size=args.score_batch_size,
        ),
        prompts=args.prompts,
        run_seed=args.seed,
        max_attempts=args.max_attempts,
        rotate_after=args.rotate_after,
        round_retries=args.round_retries,
        mix_caption=args.mix_caption,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from cluster.resources import ResourceError
    from cluster.runtime import init_ray
    from engine.pipeline import run_refresh
    from engine.prompts import PromptConfigError
    from engine.sources import SourceError

    try:
        cfg = build_config(args)
        write_resolved_config(args, args.output)
        init_ray(address=args.ray_address, num_cpus=args.num_cpus)
        summary = run_refresh(cfg)
    except (SourceError, ResourceError, PromptConfigError, ValueError) as err:
        print(f"adloop refresh: error: {err}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "skus",
                    "status",
                    "attempts_histogram",
                    "acceptance_rate_per_attempt",
                    "mean_attempts_per_accepted",
                    "wall_seconds",
                )
            },
            indent=2,
        )
    )
    t = summary["this_run"]
    print(
        f"refresh done: {summary['status']['accepted']} accepted, {summary['status']['needs_review']} need review, {summary['status']['failed']} failed; {t['candidates_generated']} candidates at {t['images_per_second']:.2f} images/s; summary in {args.output}/summary.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
