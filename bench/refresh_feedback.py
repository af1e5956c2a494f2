"""Feedback efficiency: with a scorer that accepts a known fraction p of candidates, the mean attempts
per accepted SKU should approach 1/p (truncated at K: E[k | k <= K] for a geometric k), and the
multi-candidate rounds should keep the generator's batches full as the pending set shrinks.

    python bench/refresh_feedback.py --skus 120 --rates 0.3 0.6 --max-attempts 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, write_manifest  # noqa: E402


def expected_attempts(p: float, k: int) -> float:
    """Mean attempts of the accepted SKUs when each attempt passes with probability p, at most k."""
    accept = sum(p * (1 - p) ** (i - 1) for i in range(1, k + 1))
    return sum(i * p * (1 - p) ** (i - 1) for i in range(1, k + 1)) / accept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=120)
    p.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.6])
    p.add_argument("--max-attempts", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    rows = []
    for rate in args.rates:
        with tempfile.TemporaryDirectory(prefix="adloop-feedback-") as tmp:
            manifest = write_manifest(Path(tmp) / "skus.jsonl", args.skus)
            run_measured(
                [
                    sys.executable,
                    "-m",
                    "jobs.refresh",
                    "--input",
                    str(manifest),
                    "--output",
                    f"{tmp}/out",
                    "--size",
                    "32",
                    "--steps",
                    "1",
                    "--rfnet",
                    f"fixed-rate:{rate}",
                    "--max-attempts",
                    str(args.max_attempts),
                    "--gen-batch-size",
                    str(args.batch),
                    "--no-progress",
                ]
            )
            s = json.loads((Path(tmp) / "out" / "summary.json").read_text())
        rows.append(
            {
                "p": rate,
                "mean_attempts_per_accepted": s["mean_attempts_per_accepted"],
                "expected_truncated_geometric": expected_attempts(rate, args.max_attempts),
                "one_over_p": 1 / rate,
                "accepted": s["status"]["accepted"],
                "needs_review": s["status"]["needs_review"],
                "measured_candidate_acceptance": sum(s["acceptance_rate_per_attempt"].values())
                / len(s["acceptance_rate_per_attempt"]),
                "rounds": s["this_run"]["rounds"],
                "candidates": s["this_run"]["candidates_generated"],
                "speculative_candidates": s["this_run"]["speculative_candidates"],
                "mean_generation_batch_fill": s["this_run"]["mean_generation_batch_fill"],
            }
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
