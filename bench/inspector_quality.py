"""The inspector's quality on renders of the synthetic world, where the truth is known.

Renders ``--n`` labelled images of products the thresholds were never set on (``--seed``; the thresholds
were set on seeds 7 and 11), judges each with ``rfnet.inspector.Inspector`` and prints the confusion
matrix and per-class precision, recall and F1 as a markdown table (docs/benchmarks.md keeps the latest).

    python bench/inspector_quality.py                         # 3000 renders, seed 4242, 64 px, with depth
    python bench/inspector_quality.py --size 128 --no-depth   # the engine's canvas, pixels only

The issue's target: F1 >= 0.90 for every label.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rfnet.config import LABELS  # noqa: E402
from rfnet.inspector import Inspector  # noqa: E402
from rfnet.synth import iter_samples  # noqa: E402


def evaluate(n: int, seed: int, size: int, use_depth: bool) -> dict:
    inspector = Inspector()
    confusion: Counter = Counter()
    start = time.perf_counter()
    for sample in iter_samples(n, seed=seed, size=size):
        depth = sample.depth / 255.0 if use_depth else None
        verdict = inspector.judge(sample.product, sample.generated, sample.caption, depth)
        confusion[(sample.label, verdict.label)] += 1
    per_class = {}
    for label in LABELS:
        tp = confusion[(label, label)]
        predicted = sum(confusion[(t, label)] for t in LABELS)
        actual = sum(confusion[(label, p)] for p in LABELS)
        precision, recall = tp / max(predicted, 1), tp / max(actual, 1)
        f1 = 2 * tp / max(predicted + actual, 1)
        per_class[label] = {"n": actual, "precision": precision, "recall": recall, "f1": f1}
    return {
        "n": n, "seed": seed, "size": size, "depth": use_depth,
        "seconds_per_image": (time.perf_counter() - start) / n,
        "confusion": [[confusion[(t, p)] for p in LABELS] for t in LABELS],
        "per_class": per_class,
        "min_f1": min(c["f1"] for c in per_class.values()),
    }  # fmt: skip


def markdown(result: dict) -> str:
    short = [label.split()[0] for label in LABELS]
    lines = ["| truth \\ inspector | " + " | ".join(short) + " | precision | recall | F1 |", "|---" * 10 + "|"]
    for label, row in zip(LABELS, result["confusion"], strict=True):
        c = result["per_class"][label]
        cells = " | ".join(str(x) for x in row)
        lines.append(f"| {label} | {cells} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="renders to judge")
    p.add_argument("--seed", type=int, default=4242, help="dataset seed (7 and 11 set the thresholds)")
    p.add_argument("--size", type=int, default=64, help="image side in px")
    p.add_argument("--no-depth", action="store_true", help="judge pixels only, without the render's depth map")
    p.add_argument("--output", help="also write the result as JSON here")
    args = p.parse_args()
    result = evaluate(args.n, args.seed, args.size, not args.no_depth)
    print(markdown(result))
    print(f"min F1 {result['min_f1']:.3f}; {1000 * result['seconds_per_image']:.1f} ms per image")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
