"""Driver memory and time per SKU of the refresh as the catalog grows (the cheapest setting), and the
framework's own ceiling.

Memory must stay flat as the catalog grows (the driver streams the input and only counts), and time
must grow linearly. Each size runs `adloop refresh` as its own process; the driver's peak RSS and USS
are sampled from outside (Ray's worker processes are not counted: they are not the driver; USS leaves out
the object-store pages the driver has mapped, which RSS counts).

The ceiling, what the framework alone could serve if the generator cost nothing: the CPU seconds of every
process of the run but the generation actor (the driver, Ray's daemons, the task workers, the scoring
actor) grow by c per SKU (the slope of a straight line through the sizes, so start-up drops out); on this
machine's cores the framework can do at most cores / c SKUs/s. It assumes that work spreads over every core.
(The generator's own time cannot simply be subtracted from the wall time: on 2 shared cores the actor's
``gen_seconds`` include the time it waits for the cores while the rest runs.)

    python bench/refresh_scale.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_manifest  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--size", type=int, default=32, help="canvas px (cheap)")
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args()
    if len(args.sizes) < 2:
        p.error("--sizes needs at least two sizes: the slopes come from a line through them")
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
            gen_seconds = pq.read_table(Path(tmp) / "out" / "results", columns=["gen_seconds"]).column(0)
            rows.append(
                {
                    "skus": n,
                    "seconds": run["seconds"],
                    "seconds_per_sku": run["seconds"] / n,
                    "generator_seconds_per_sku": float(np.sum(gen_seconds)) / n,
                    "driver_peak_rss_mb": run["peak_rss_mb"],
                    "driver_peak_uss_mb": run["peak_uss_mb"],
                    "cpu_seconds": run["cpu_seconds"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # a long series shows its progress
    sizes = np.array([r["skus"] for r in rows], float)
    b, a = np.polyfit(sizes, [r["seconds"] for r in rows], 1)
    framework_cpu = [r["cpu_seconds"]["driver"] + r["cpu_seconds"]["other"] for r in rows]
    c = np.polyfit(sizes, framework_cpu, 1)[0]
    cores = psutil.cpu_count()
    first, last = rows[0], rows[-1]
    print(
        json.dumps(
            {
                "runs": rows,
                "fit_startup_seconds": a,
                "fit_seconds_per_sku": b,
                "framework_cpu_seconds_per_sku": c,
                "cores": cores,
                "framework_ceiling_skus_per_second_by_cpu": cores / c,
                "time_ratio": last["seconds"] / first["seconds"],
                "size_ratio": last["skus"] / first["skus"],
                "rss_ratio_last_over_previous": last["driver_peak_rss_mb"] / rows[-2]["driver_peak_rss_mb"],
                "uss_ratio_last_over_previous": last["driver_peak_uss_mb"] / rows[-2]["driver_peak_uss_mb"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
