"""GPU throughput of the generator: the ``sd15`` preset (full SD 1.5 + ControlNet-canny sizes, random
weights), 512 px, 20 and 40 DDIM steps, bf16, CFG 7.5, on one GPU. Reports images/s and the fraction
of the GPU's peak bf16 compute reached (FLOPs counted with torch's FlopCounterMode on the same
pipeline, so attention and convolutions are both counted).

Prepared to run as one short script on a lent GPU machine (it does nothing useful on CPU):

    python bench/gpu_refresh.py --batch 8 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import sample_batch  # noqa: E402

from engine.config import GeneratorConfig  # noqa: E402
from engine.generate import GenerateStage  # noqa: E402


def flops(stage: GenerateStage, b: dict, steps: int) -> float:
    stage.cfg.steps = steps
    with FlopCounterMode(display=False) as counter:
        stage(b)
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 40])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_refresh.py needs a CUDA GPU")
    stage = GenerateStage(
        GeneratorConfig(base_model="sd15", size=args.size, steps=args.steps[0], dtype="bf16", device="cuda")
    )
    b = sample_batch(args.size, args.batch, "product on a marble table")
    one, two = flops(stage, b, 1), flops(stage, b, 2)
    per_step = two - one
    results = {"gpu": torch.cuda.get_device_name(), "batch": args.batch, "size": args.size, "runs": []}
    for steps in args.steps:
        stage.cfg.steps = steps
        stage(b)  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            stage(b)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        total = one + (steps - 1) * per_step
        results["runs"].append(
            {
                "steps": steps,
                "images_per_s": args.batch / seconds,
                "seconds_per_batch": seconds,
                "tflop_per_image": total / args.batch / 1e12,
                "achieved_tflops": total / seconds / 1e12,
                "fraction_of_peak": total / seconds / 1e12 / args.peak_tflops,
            }
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
