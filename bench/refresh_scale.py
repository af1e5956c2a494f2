"""Driver memory and time per SKU of the refresh at two catalog sizes (a cheap setting).

Memory must stay flat as the catalog grows (the driver streams the input and only counts), and time
must grow linearly. Each size runs `adloop refresh` as its own process; the driver's peak RSS is
sampled from outside (Ray's worker processes are not counted: they are not the driver).

    python bench/refresh_scale.py --sizes 1000 10000
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
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--size", type=int, default=32, help="canvas px (cheap)")
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="adloop-scale-") as tmp:
            manifest = write_manifest(Path(tmp) / "skus.jsonl", n)
            run = run_measured(
                [
                    sys.executable,
                    "-m",
                    "jobs.refresh",
                    "--input",
                    str(manifest),
                    "--output",
                    f"{tmp}/out",
                    "--size",
                    str(args.size),
                    "--steps",
                    str(args.steps),
                    "--rfnet",
                    "fixed-rate:1",
                    "--gen-batch-size",
                    "16",
                    "--score-batch-size",
                    "64",
                    "--no-progress",
                ]
            )
            summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
            assert summary["skus"] == n
            rows.append(
                {
                    "skus": n,
                    "seconds": run["seconds"],
                    "seconds_per_sku": run["seconds"] / n,
                    "driver_peak_rss_mb": run["peak_rss_mb"],
                }
            )
    first, last = rows[0], rows[-1]
    print(
        json.dumps(
            {
                "runs": rows,
                "time_ratio": last["seconds"] / first["seconds"],
                "size_ratio": last["skus"] / first["skus"],
                "memory_ratio": last["driver_peak_rss_mb"] / first["driver_peak_rss_mb"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
