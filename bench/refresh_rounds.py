"""The cost of a retry round: the same SKUs with a scorer that accepts nothing, at K = 1 and at K = 5.

With K = 5 every SKU is generated five times; with tiny models at 64 px and 2 steps generation costs almost
nothing, so what the ratio of the two wall times measures is what each extra round adds (pool start-up,
model loads, round barriers).

    python bench/refresh_rounds.py --skus 8 --size 64 --steps 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_manifest  # noqa: E402


def refresh(tmp: str, manifest: Path, k: int, args: argparse.Namespace) -> dict:
    out = f"{tmp}/out-k{k}"
    cmd = [sys.executable, "-m", "jobs.refresh", "--input", str(manifest), "--output", out, "--no-progress",
           "--size", str(args.size), "--steps", str(args.steps), "--rfnet", "fixed-rate:0",
           "--max-attempts", str(k), "--num-cpus", str(args.num_cpus)]  # fmt: skip
    measured = run_measured(cmd)
    summary = json.loads((Path(out) / "summary.json").read_text())
    return {
        "k": k,
        "seconds": round(measured["seconds"], 1),
        "rounds": summary["this_run"]["rounds"],
        "candidates": summary["candidates"],
        "needs_review": summary["status"]["needs_review"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="adloop-rounds-") as tmp:
        manifest = write_manifest(Path(tmp) / "skus.jsonl", args.skus)
        runs = [refresh(tmp, manifest, k, args) for k in (1, 5)]
    print(json.dumps({"runs": runs, "ratio_k5_over_k1": round(runs[1]["seconds"] / runs[0]["seconds"], 2)}))


if __name__ == "__main__":
    main()
