"""RFNet training throughput: DeepSpeed ZeRO-2 vs DDP, 2 Ray Train workers, measured side by side.

Both strategies train the same model on the same data for the same number of steps; runs alternate
(DDP, ZeRO-2, DDP, ZeRO-2, ...) so machine noise hits both alike, and the reported figure is the ratio of
medians of the per-epoch global samples/s (the first epoch of each run is warm-up and dropped).

    python bench/rfnet_throughput.py --out runs/bench_rfnet_throughput
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rfnet.config import preset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="existing RF1M folder; default: generate 1200 images under --out")
    p.add_argument("--repeats", type=int, default=2, help="runs per strategy (alternating)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    p.add_argument("--steps", type=int, default=25, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from rfnet.synth import generate_rf1m
    from rfnet.train import TrainConfig, fit

    data = args.data or os.path.join(args.out, "data")
    if not os.path.isfile(os.path.join(data, "label.txt")):
        generate_rf1m(data, 1200, seed=0, size=args.image_size)
    rates: dict[str, list[float]] = {"ddp": [], "deepspeed": []}
    for rep in range(args.repeats):
        for strategy in ("ddp", "deepspeed"):
            cfg = TrainConfig(
                data=data, output=os.path.join(args.out, f"{strategy}_{rep}"), strategy=strategy, zero_stage=2,
                model=preset("tiny").replace(image_size=args.image_size), num_workers=args.workers,
                epochs=args.epochs, batch_size=args.batch_size, max_steps_per_epoch=args.steps,
                val_fraction=0.05, test_fraction=0.05, target_precision=None,
            )  # fmt: skip
            history = fit(cfg)["history"]
            rates[strategy] += [h["train_samples_per_s"] for h in history[1:]]
            logging.info(
                "%s run %d: %s samples/s", strategy, rep, [round(h["train_samples_per_s"], 1) for h in history]
            )
    ddp, ds = statistics.median(rates["ddp"]), statistics.median(rates["deepspeed"])
    result = {"ddp_samples_per_s": ddp, "zero2_samples_per_s": ds, "zero2_over_ddp": ds / ddp, "samples": rates,
              "workers": args.workers, "batch_per_worker": args.batch_size, "image_size": args.image_size}  # fmt: skip
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nDDP {ddp:.1f} samples/s, DeepSpeed ZeRO-2 {ds:.1f} samples/s, ratio ZeRO-2/DDP = {ds / ddp:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
