"""Does the RFFT ControlNet need fewer attempts in ``adloop refresh``? Same products, seeds and RFNet.

Runs the refresh job (``jobs.refresh``, Recurrent Generation on Ray Data) once with the starting
ControlNet and once per fine-tuned ControlNet folder, on the same input, run seed, RFNet and threshold,
and prints the refresh summaries side by side (accepted, needs review, mean attempts per accepted SKU,
candidates generated).

    python bench/rfft_refresh_check.py --input HELD_OUT.jsonl --rfnet RFNET --out runs/refresh_check \\
        --controlnet cc=runs/bench_rfft/cc-beta100/controlnet --controlnet none=runs/bench_rfft/none/controlnet
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--rfnet", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--controlnet", action="append", default=[], metavar="NAME=DIR", help="fine-tuned ControlNets")
    p.add_argument("--threshold", default=None, help="P(Available) threshold (default: the checkpoint's)")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args(argv)

    from jobs import refresh

    runs = {"start": None} | dict(item.split("=", 1) for item in args.controlnet)
    rows = {}
    for name, controlnet in runs.items():
        out = os.path.join(args.out, name)
        argv_run = [
            "--input", args.input, "--output", out, "--rfnet", args.rfnet, "--max-attempts", str(args.max_attempts),
            "--size", str(args.size), "--steps", str(args.steps), "--seed", str(args.seed),
            "--num-cpus", str(args.num_cpus), "--device", "cpu", "--no-progress",
        ]  # fmt: skip
        if controlnet:
            argv_run += ["--controlnet", controlnet]
        if args.threshold is not None:
            argv_run += ["--threshold", str(args.threshold)]
        if refresh.main(argv_run) != 0:
            raise SystemExit(f"refresh failed for {name}")
        summary = json.load(open(os.path.join(out, "summary.json")))
        rows[name] = {
            "controlnet": controlnet or "tiny preset (start)",
            "accepted": summary["status"]["accepted"],
            "needs_review": summary["status"]["needs_review"],
            "mean_attempts_per_accepted": summary["mean_attempts_per_accepted"],
            "attempts_histogram": summary["attempts_histogram"],
            "candidates_generated": summary["this_run"]["candidates_generated"],
        }
    with open(os.path.join(args.out, "refresh_check.json"), "w") as f:
        json.dump({"command": "python " + " ".join(sys.argv), "runs": rows}, f, indent=2)
    print("| ControlNet | accepted | needs review | mean attempts per accepted | candidates generated |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        mean = r["mean_attempts_per_accepted"]
        print(
            f"| {name} | {r['accepted']} | {r['needs_review']} | {mean:.3f} | {r['candidates_generated']} |"
            if mean is not None
            else f"| {name} | {r['accepted']} | {r['needs_review']} | - | {r['candidates_generated']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
