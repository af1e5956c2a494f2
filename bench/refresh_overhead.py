"""Overhead of the refresh job against a plain loop over the same pipeline.

Same run, same SKUs, same model settings and batch size: (a) `adloop generate`, a single-process loop
(decode, condition, generate, paste back, write PNG); (b) `adloop refresh` on a local Ray with a scorer
that accepts everything (`fixed-rate:1`), so each SKU is generated exactly once. The figure is
images/s of (b) divided by images/s of (a), both end to end (process start to exit).

``--attempts K`` (K > 1) measures the retry path instead: the refresh gets a scorer that accepts nothing
(`fixed-rate:0`) and ``--max-attempts K``, so every SKU ends needs_review after K candidates, and the plain
loop generates each SKU K times (K rows per SKU in its manifest): the same number of images both ways.

    python bench/refresh_overhead.py --skus 240 --size 128 --steps 30 --batch 4
    python bench/refresh_overhead.py --skus 7 --attempts 5 --base-model toy   # a demo-sized run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_manifest  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=240)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--attempts", type=int, default=1, help="candidates per SKU (K > 1: nothing is accepted)")
    p.add_argument("--base-model", default="tiny")
    args = p.parse_args()
    images = args.skus * args.attempts
    with tempfile.TemporaryDirectory(prefix="adloop-bench-") as tmp:
        manifest = write_manifest(Path(tmp) / "skus.jsonl", args.skus)
        repeated = write_manifest(Path(tmp) / "repeated.jsonl", args.skus, repeats=args.attempts)
        model = ["--size", str(args.size), "--steps", str(args.steps), "--base-model", args.base_model]
        plain = run_measured(
            [
                sys.executable,
                "-m",
                "jobs.generate",
                "--input",
                str(repeated),
                *model,
                "--output",
                f"{tmp}/plain",
                "--gen-batch-size",
                str(args.batch),
            ]
        )
        ray_run = run_measured(
            [
                sys.executable,
                "-m",
                "jobs.refresh",
                "--input",
                str(manifest),
                *model,
                "--output",
                f"{tmp}/refresh",
                "--rfnet",
                "fixed-rate:1" if args.attempts == 1 else "fixed-rate:0",
                "--max-attempts",
                str(args.attempts),
                "--gen-batch-size",
                str(args.batch),
                "--no-progress",
            ]
        )
        summary = json.loads((Path(tmp) / "refresh" / "summary.json").read_text())
    settled = summary["status"]["accepted" if args.attempts == 1 else "needs_review"]
    assert settled == args.skus and summary["candidates"] == images, summary
    result = {
        "skus": args.skus,
        "attempts": args.attempts,
        "images": images,
        "base_model": args.base_model,
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "plain_loop_seconds": round(plain["seconds"], 1),
        "refresh_seconds": round(ray_run["seconds"], 1),
        "plain_loop_images_per_s": images / plain["seconds"],
        "refresh_images_per_s": images / ray_run["seconds"],
        "refresh_mean_batch_fill": summary["this_run"]["mean_generation_batch_fill"],
    }
    result["ratio_refresh_over_plain"] = result["refresh_images_per_s"] / result["plain_loop_images_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
