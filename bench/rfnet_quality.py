"""RFNet quality on the synthetic RF1M set: held-out AP on Available, full model vs modality ablations.

Trains the full five-modality RFNet and, with the same data, split, schedule and workers, the ablations of
the paper's Table 2 (each modality removed in turn) plus the generated-image-only baseline (the paper's
Table 1 single-image classifiers), all on 2 CPU Ray Train workers, one after the other in one process.
Prints a table with the paper's numbers next to ours and writes ``<out>/quality.json``.

    python bench/rfnet_quality.py --out runs/bench_rfnet_quality            # full + all ablations
    python bench/rfnet_quality.py --out runs/q --only full                   # just the 15-minute check

Pass criteria (issue 4): the full model, trained within 15 minutes on 2 CPU workers, reaches held-out AP on
Available >= 0.90 and beats the generated-image-only ablation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rfnet.config import MODALITIES, preset  # noqa: E402

# Paper Table 2 (AP; docs/paper.md §6.3) and Table 1's ResNet-50 on I_g (docs/paper.md §3.4).
PAPER_AP = {
    "full": 87.58,
    "w/o product": 81.17,
    "w/o generated": 82.06,
    "w/o depth": 85.31,
    "w/o saliency": 83.91,
    "w/o caption": 84.53,
    "generated only": 77.29,
}
RUNS = {
    "full": MODALITIES,
    "w/o product": tuple(m for m in MODALITIES if m != "product"),
    "w/o generated": tuple(m for m in MODALITIES if m != "generated"),
    "w/o depth": tuple(m for m in MODALITIES if m != "depth"),
    "w/o saliency": tuple(m for m in MODALITIES if m != "saliency"),
    "w/o caption": tuple(m for m in MODALITIES if m != "caption"),
    "generated only": ("generated",),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--data", action="append", help="existing RF1M folder (repeat to merge sets); default: generate one"
    )
    p.add_argument("--eval-generated", help="also score each run on this generated RF1M against its inspector labels")
    p.add_argument("--depth", default="tiny", help="depth model recorded with each checkpoint (and used to score)")
    p.add_argument("--saliency", default="tiny", help="saliency model recorded with each checkpoint")
    p.add_argument("--n", type=int, default=8000, help="images to generate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epochs", type=int, default=36, help="36 fits in ~9 min on 2 quiet CPU cores (docs/benchmarks.md)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="per worker")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strategy", default="ddp", choices=["ddp", "deepspeed"])
    p.add_argument("--only", default=",".join(RUNS), help=f"comma list from: {', '.join(RUNS)}")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from rfnet.synth import generate_rf1m
    from rfnet.train import TrainConfig, fit

    os.makedirs(args.out, exist_ok=True)
    data = args.data
    if data is None:
        data = os.path.join(args.out, "data")
        if not os.path.isfile(os.path.join(data, "label.txt")):
            t = time.perf_counter()
            generate_rf1m(data, args.n, seed=args.seed, size=64)
            logging.info("generated %d images in %.0f s", args.n, time.perf_counter() - t)

    # Runs of earlier invocations with the same --out stay in quality.json, so ``--only`` can add the
    # ablations to a full run made before (each entry records its epochs; compare like with like).
    path = os.path.join(args.out, "quality.json")
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    for name in args.only.split(","):
        cfg = TrainConfig(
            data=data, output=os.path.join(args.out, name.replace("/", "").replace(" ", "_")), name="rfnet",
            model=preset("tiny").replace(modalities=RUNS[name]), strategy=args.strategy, num_workers=args.workers,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, depth=args.depth,
            saliency=args.saliency,
        )  # fmt: skip
        t = time.perf_counter()
        metrics = fit(cfg)
        wall = time.perf_counter() - t
        test = metrics["test"]
        results[name] = {
            "modalities": list(RUNS[name]), "epochs": args.epochs, "wall_s": wall, "ap": test["ap"], "f1": test["f1"],
            "precision": test["precision"], "recall": test["recall"], "accuracy": test["accuracy"],
            "macro_f1": test["macro_f1"], "per_class_f1": test["per_class_f1"], "n_test": test["n"],
            "train_samples_per_s": metrics["train_samples_per_s"],
        }  # fmt: skip
        if args.eval_generated:
            from bench.rfnet_on_generated import score_generated_set

            scored = score_generated_set(
                os.path.join(cfg.output, "rfnet"), args.eval_generated, args.depth, args.saliency
            )
            results[name]["generated"] = {
                k: scored[k] for k in ("ap_available", "accuracy", "inspector_available", "n")
            }
        logging.info("%s: AP %.4f F1 %.4f in %.0f s", name, test["ap"], test["f1"], wall)
        with open(path, "w") as f:
            json.dump(results, f, indent=2)

    full = results.get("full")
    print(
        f"\n{'run':<16} {'paper AP':>9} {'paper drop':>11} {'our AP':>8} {'our drop':>9} {'F1':>6} {'wall s':>7} epochs"
        "  generated AP (drop)"
    )
    for name, r in results.items():
        paper_drop = PAPER_AP[name] - PAPER_AP["full"]
        drop = 100 * (r["ap"] - full["ap"]) if full else float("nan")
        gen = r.get("generated", {}).get("ap_available", float("nan"))
        gen_drop = 100 * (gen - full.get("generated", {}).get("ap_available", float("nan"))) if full else float("nan")
        print(f"{name:<16} {PAPER_AP[name]:>9.2f} {paper_drop:>+11.2f} {100 * r['ap']:>8.2f} {drop:>+9.2f} "
              f"{100 * r['f1']:>6.2f} {r['wall_s']:>7.0f} {r.get('epochs', '?'):>6}  {100 * gen:.2f} ({gen_drop:+.2f})")  # fmt: skip
    if full:
        print("\nper-class F1 (full):", {k: round(v, 3) for k, v in full["per_class_f1"].items()})
        ok = full["ap"] >= 0.90 and full["wall_s"] <= 900
        if "generated only" in results:
            ok &= full["ap"] > results["generated only"]["ap"]
        print(f"\nfull model: AP {full['ap']:.4f} in {full['wall_s']:.0f} s -> {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
