"""Overhead of the refresh job against a plain loop over the same pipeline.

Same run, same SKUs, same model settings and batch size: (a) `adloop generate`, a single-process loop
(decode, condition, generate, paste back, write PNG); (b) `adloop refresh` on a local Ray with a scorer
that accepts everything (`fixed-rate:1`), so each SKU is generated exactly once. The figure is
images/s of (b) divided by images/s of (a), both end to end (process start to exit).

    python bench/refresh_overhead.py --skus 240 --size 128 --steps 30 --batch 4
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
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="adloop-bench-") as tmp:
        manifest = write_manifest(Path(tmp) / "skus.jsonl", args.skus)
        common = ["--input", str(manifest), "--size", str(args.size), "--steps", str(args.steps)]
        plain = run_measured(
            [
                sys.executable,
                "-m",
                "jobs.generate",
                *common,
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
                *common,
                "--output",
                f"{tmp}/refresh",
                "--rfnet",
                "fixed-rate:1",
                "--gen-batch-size",
                str(args.batch),
                "--no-progress",
            ]
        )
        summary = json.loads((Path(tmp) / "refresh" / "summary.json").read_text())
    assert summary["status"]["accepted"] == args.skus and summary["candidates"] == args.skus
    result = {
        "skus": args.skus,
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "plain_loop_images_per_s": args.skus / plain["seconds"],
        "refresh_images_per_s": args.skus / ray_run["seconds"],
        "refresh_mean_batch_fill": summary["this_run"]["mean_generation_batch_fill"],
    }
    result["ratio_refresh_over_plain"] = result["refresh_images_per_s"] / result["plain_loop_images_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
