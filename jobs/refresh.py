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

from jobs.args import add_generator_args, conditioning_config, generator_config, job_parser

# The engine (Ray, diffusers, pyarrow) is imported only once the arguments are parsed, so --help is instant.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop refresh", __doc__)
    p.add_argument(
        "--input",
        required=True,
        help="folder of product cutouts (SKU id = file stem) or a manifest (.parquet/.csv/.jsonl); local or fsspec URI",
    )
    p.add_argument(
        "--output", required=True, help="output root (local or fsspec URI); rerun with the same one to resume"
    )
    add_generator_args(p)
    s = p.add_argument_group("scoring and the feedback loop")
    s.add_argument(
        "--rfnet",
        default="tiny",
        help="RFNet checkpoint folder or 'tiny' (default); 'fixed-rate:P' is a benchmark-only scorer accepting a known fraction P",
    )
    s.add_argument(
        "--threshold", type=float, default=None, help="accept when P(Available) >= T (default: the checkpoint's)"
    )
    s.add_argument("--depth", default="tiny", help="depth model folder or 'tiny'")
    s.add_argument("--saliency", default="tiny", help="saliency model folder or 'tiny'")
    s.add_argument("--max-attempts", type=int, default=5, help="attempt budget per SKU (default 5)")
    s.add_argument(
        "--rotate-after",
        type=int,
        default=2,
        help="next prompt template after this many failures (default 2; 0 = never)",
    )
    r = p.add_argument_group("resources (default: derived from the cluster)")
    r.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    r.add_argument("--generators", type=int, default=None, help="generation actors")
    r.add_argument("--scorers", type=int, default=None, help="scoring actors")
    r.add_argument(
        "--gpus-per-generator", type=float, default=None, help="GPUs per generation actor (fractions allowed)"
    )
    r.add_argument("--gpus-per-scorer", type=float, default=None, help="GPUs per scoring actor (fractions allowed)")
    r.add_argument("--cpus-per-generator", type=float, default=None, help="CPUs per generation actor")
    r.add_argument("--cpus-per-scorer", type=float, default=None, help="CPUs per scoring actor")
    r.add_argument(
        "--gen-batch-size", type=int, default=None, help="images per generator call (default 8 on GPU, 4 on CPU)"
    )
    r.add_argument("--score-batch-size", type=int, default=16, help="candidates per scorer call (default 16)")
    r.add_argument(
        "--round-retries",
        type=int,
        default=3,
        help="rerun a round that fails for a cluster reason (lost node, actor or object) over its SKUs not "
        "committed yet, up to this many times (default 3; 0 = fail the job)",
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The job's ``engine.pipeline.RefreshConfig`` from its parsed arguments."""
    from cluster.resources import ResourceConfig
    from engine.pipeline import RefreshConfig
    from engine.score import ScorerConfig

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
        init_ray(address=args.address, num_cpus=args.num_cpus)
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
