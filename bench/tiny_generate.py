"""Seconds per image of the tiny preset at the demo's settings (128 px, 10 DDIM steps, CFG 7.5).

Measures batch 1 and batch 4 side by side in one run (this machine is noisy: the ratio is the figure to
trust) after one warm-up call. Usage: ``python bench/tiny_generate.py [--size 128 --steps 10 --repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sample_batch  # noqa: E402

from engine.config import GeneratorConfig  # noqa: E402
from engine.generate import GenerateStage  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    stage = GenerateStage(GeneratorConfig(size=args.size, steps=args.steps))
    results = {}
    for bs in (1, 4):
        batch = sample_batch(args.size, bs)
        stage(batch)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            stage(batch)
            times.append((time.perf_counter() - start) / bs)
        results[f"batch{bs}_s_per_image_median"] = float(np.median(times))
        results[f"batch{bs}_s_per_image_min"] = float(np.min(times))
    results["batch4_over_batch1"] = results["batch4_s_per_image_median"] / results["batch1_s_per_image_median"]
    print(json.dumps({"size": args.size, "steps": args.steps, **results}, indent=2))


if __name__ == "__main__":
    main()
