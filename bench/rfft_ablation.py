"""RFFT ablation and beta sweep: no regulariser, KL and Consistent Condition, judged by RFNet and the inspector.

Fine-tunes the generator's ControlNet once per regulariser and beta (``adloop train-rfft``, Ray Train
workers), with the same products, seeds, schedule and RFNet, changing only the regulariser and its weight.
For the base generator and each run it reports, on held-out products at fixed seeds (one generation per
product, the refresh's seeds):

- RFNet's Ava: the share where Available is the most likely class (the paper's figure), and the share
  accepted at the judge's threshold;
- the inspector's Ava of the same images (``rfnet.inspector``: the paper's Human Ava);
- the share of the gap to 100% that the run closes, ``(after - before) / (100 - before)``, by RFNet and
  by the inspector, so that bases of different rates compare;
- the diversity across seeds (and its ratio to the base), and Recurrent Generation's attempts.

The toy world (the trained toy generator, the toy RFNet and the toy depth and saliency models that compute
its maps, in the reward and in the judge):

    python bench/rfft_ablation.py --base-model toy --size 128 --gen-steps 20 --rfnet toy \
        --depth toy --saliency toy --threshold checkpoint --regularisers none,kl,cc --beta 1,10,100 \
        --out runs/rfft_toy --save-grid base,none,cc-beta10

The earlier setting (the random tiny generator and an RFNet trained on synthetic renders):

    python bench/rfft_ablation.py --rfnet RFNET_CHECKPOINT --out runs/bench_rfft [--steps 60]

The products are drawn with a seed neither the generator nor the RFNet saw: in the toy world, products of
the world itself (``--product-seed`` 5151; the toy generator and the toy RFNet were trained on seeds 0,
1, 100, 200 and 300 and evaluated on 909), otherwise cutouts of a fresh synthetic RF1M set (seed 101).
Products whose cutout is Unsuitable are left out (the generator cannot fix them); training and held-out
products are disjoint. ``no regulariser`` runs once whatever the betas. Writes ``<out>/results.json``
(every row, each run's per-evaluation curves, the commands), ``<out>/ava_vs_diversity.svg``, with
``--save-grid`` ``<out>/grid.png`` (the same held-out products and seeds for each named row, side by side),
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOY_PRODUCT_SEED = 5151
RF1M_PRODUCT_SEED = 101
CURVE_KEYS = (
    "step",
    "available_rate",
    "argmax_rate",
    "mean_p_available",
    "inspector_available_rate",
    "diversity",
    "background_std",
)


def write_products(
    out: str, n_train: int, n_eval: int, seed: int, size: int, toy_world: bool = False
) -> tuple[str, str]:
    """Manifests (JSONL) of disjoint training and held-out product cutouts, Unsuitable ones left out."""
    # a tenth of the world's products are drawn damaged: draw enough to leave them out
    n = int(1.4 * (n_train + n_eval))
    rows = _world_products(out, n, seed, size) if toy_world else _rf1m_products(out, n, seed, size)
    if len(rows) < n_train + n_eval:
        raise SystemExit(f"only {len(rows)} usable products for {n_train} + {n_eval}")
    paths = []
    for kind, part in (("train", rows[:n_train]), ("held_out", rows[n_train : n_train + n_eval])):
        path = os.path.join(out, f"{kind}.jsonl")
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
        paths.append(path)
    return paths[0], paths[1]


def _world_products(out: str, n: int, seed: int, size: int) -> list[dict]:
    """The toy world's own products (what its generator and RFNet were trained on), as manifest rows."""
    from toy.rf1m import product_cutouts

    folder = os.path.join(out, "products")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for product in product_cutouts(n + 8, seed, size):
        if product["unsuitable"]:
            continue
        path = os.path.join(folder, f"{product['sku_id']}.png")
        with open(path, "wb") as f:
            f.write(product["image_bytes"])
        rows.append({"sku_id": product["sku_id"], "image_uri": path, "caption": product["caption"]})
    return rows


def _rf1m_products(out: str, n: int, seed: int, size: int) -> list[dict]:
    """Cutouts of a fresh synthetic RF1M set, as manifest rows."""
    from rfnet.synth import generate_rf1m

    root = os.path.join(out, "products")
    if not os.path.exists(os.path.join(root, "label.txt")):
        # two images per product are enough to read each product's cutout and whether it is Unsuitable
        generate_rf1m(root, 2 * n + 8, seed=seed, size=size, images_per_product=2)
    labels = dict(line.split("\t") for line in open(os.path.join(root, "label.txt")).read().splitlines())
    captions = dict(line.split("\t", 1) for line in open(os.path.join(root, "caption.txt")).read().splitlines())
    return [
        {
            "sku_id": name.split("_")[0],
            "image_uri": os.path.join(root, "product", name),
            "caption": captions.get(name, ""),
        }
        for name in sorted(labels)
        if name.endswith("_00.png") and labels[name] != "Unsuitable"
    ]


def calibrate_threshold(
    rfnet: str, out: str, target_precision: float, seed: int, depth: str, saliency: str, n: int = 1200
) -> dict:
    """The P(Available) threshold reaching ``target_precision`` on Available, on a fresh synthetic set.

    docs/paper.md §8, Q2: production gates on a threshold calibrated for precision on a held-out
    labelled set, not on 0.5. The set is drawn with a seed neither RFNet nor the RFFT products used.
    """
    import numpy as np

    from rfnet import Scorer
    from rfnet.data import decode_examples, read_rf1m
    from rfnet.synth import generate_rf1m

    root = os.path.join(out, "calibration")
    if not os.path.exists(os.path.join(root, "label.txt")):
        generate_rf1m(root, n, seed=seed, size=64)
    scorer = Scorer(rfnet, device="cpu", depth=depth, saliency=saliency)
    examples = [e.to_dict() for e in read_rf1m(root)]
    p, y = [], []
    for i in range(0, len(examples), 64):
        b = decode_examples(examples[i : i + 64], 64)
        p.append(scorer.score(b["product"], b["generated"], list(b["caption"])).p_available)
        y.append(b["label"] == 0)
    p, y = np.concatenate(p), np.concatenate(y)
    best = None
    for t in np.unique(p):
        sel = p >= t
        precision = float(y[sel].mean())
        if precision >= target_precision and sel.sum() >= 20:
            best = (float(t), precision, float(sel[y].mean()))
            break
    if best is None:  # unreachable: take the threshold of the highest precision with >= 20 accepted
        ts = np.sort(p)[::-1][19:]
        t = max(ts, key=lambda t: y[p >= t].mean())
        best = (float(t), float(y[p >= t].mean()), float((p >= t)[y].mean()))
    return {
        "threshold": best[0],
        "precision": best[1],
        "recall": best[2],
        "target_precision": target_precision,
        "n": int(len(p)),
        "positives": int(y.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rfnet.config import TOY_PRESET

    toy_world = args.base_model == TOY_PRESET
    if args.product_seed is None:
        args.product_seed = TOY_PRODUCT_SEED if toy_world else RF1M_PRODUCT_SEED
    os.makedirs(args.out, exist_ok=True)
    train, held_out = write_products(args.out, args.n_train, args.n_eval, args.product_seed, args.size, toy_world)
    path = os.path.join(args.out, "results.json")
    # Runs accumulate across invocations with the same --out (e.g. one regulariser at a time).
    results = json.load(open(path)) if os.path.exists(path) else {"runs": {}}
    threshold = judge_threshold(args, results)
    print(json.dumps({"threshold": threshold, "calibration": results.get("calibration")}))
    results.setdefault("commands", []).append("python " + " ".join(sys.argv))
    results["setting"] = {
        "base_model": args.base_model,
        "rfnet": args.rfnet,
        "depth": args.depth,
        "saliency": args.saliency,
        "threshold": threshold,
        "product_seed": args.product_seed,
        "n_eval": args.n_eval,
    }
    for reg, beta in plan(args.regularisers, args.beta):
        key = run_key(reg, beta)
        run = train_run(args, reg, beta, train, held_out, threshold, os.path.join(args.out, key))
        # every run evaluates the starting ControlNet at step 0 on the same products and seeds: the base row
        results.setdefault("base", run.pop("base"))
        results["runs"][key] = run
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    if args.save_grid:
        results["grid"] = save_grid(args.out, args.save_grid.split(","), results, held_out, args.grid_products)
    points = rows(results)
    results["figures"] = {name: f for name, _, f in points}
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "ava_vs_diversity.svg"), "w") as f:
        f.write(ava_diversity_svg(points))
    print(table(results, points))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from engine.config import GeneratorConfig, ScorerConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rfnet", required=True, help="RFNet checkpoint, or toy (the toy world's)")
    p.add_argument("--out", required=True)
    p.add_argument("--base-model", default=GeneratorConfig.base_model, help="the generator, e.g. toy")
    p.add_argument("--depth", default=ScorerConfig.depth, help="depth model of RFNet's maps (reward and judge)")
    p.add_argument("--saliency", default=ScorerConfig.saliency, help="saliency model of RFNet's maps")
    p.add_argument("--regularisers", default="cc,kl,none")
    p.add_argument("--beta", default="1", help="regulariser weight, or a comma list: each regulariser at each")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=2, help="per worker")
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-eval", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--gen-steps", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--measure-attempts", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--product-seed",
        type=int,
        default=None,
        help=f"seed of the products (default: {TOY_PRODUCT_SEED} in the toy world, else {RF1M_PRODUCT_SEED})",
    )
    p.add_argument(
        "--threshold",
        default="calibrate",
        help="P(Available) threshold of the judge: a number, 'checkpoint', or 'calibrate' (default)",
    )
    p.add_argument("--target-precision", type=float, default=0.8, help="precision on Available for 'calibrate'")
    p.add_argument("--save-grid", default=None, help="rows to picture side by side, e.g. base,none,cc-beta10")
    p.add_argument("--grid-products", type=int, default=6, help="held-out products in the grid")
    args = p.parse_args(argv)
    # The product manifests name their images by path, and a relative path in a manifest is read relative
    # to the manifest's folder: write absolute ones.
    args.out = os.path.abspath(args.out)
    return args


def judge_threshold(args: argparse.Namespace, results: dict) -> float | None:
    """The judge's P(Available) threshold: calibrated once per --out, given, or ``None`` (the checkpoint's)."""
    if args.threshold == "calibrate":
        if "calibration" not in results:
            results["calibration"] = calibrate_threshold(
                args.rfnet, args.out, args.target_precision, seed=202, depth=args.depth, saliency=args.saliency
            )
        return results["calibration"]["threshold"]
    return None if args.threshold == "checkpoint" else float(args.threshold)


def plan(regularisers: str, betas: str) -> list[tuple[str, float]]:
    """(regulariser, beta) of each run: every regulariser at every beta, and no regulariser once (its beta
    multiplies nothing)."""
    values = [float(b) for b in betas.split(",")]
    runs = []
    for reg in regularisers.split(","):
        runs += [(reg, values[0])] if reg == "none" else [(reg, b) for b in values]
    return runs


def run_key(regulariser: str, beta: float) -> str:
    return regulariser if regulariser == "none" else f"{regulariser}-beta{beta:g}"


def train_run(args, reg: str, beta: float, train: str, held_out: str, threshold: float | None, run_out: str) -> dict:
    """One ``adloop train-rfft`` run; its step-0 evaluation (``base``), final figures and curves."""
    from jobs import train_rfft

    start = time.perf_counter()
    train_rfft.main(
        [
            "--train-products", train, "--eval-products", held_out, "--output", run_out,
            "--base-model", args.base_model, "--rfnet", args.rfnet, "--depth", args.depth,
            "--saliency", args.saliency, "--regulariser", reg, "--beta", str(beta),
            "--max-steps", str(args.steps), "--workers", str(args.workers),
            "--size", str(args.size), "--steps", str(args.gen_steps),
            "--set", f"lr={args.lr}", "--set", f"batch_size={args.batch_size}",
            "--set", f"grad_accum={args.grad_accum}", "--set", f"eval_every={args.eval_every}",
            "--set", f"checkpoint_every={args.eval_every}", "--set", f"eval_seeds={args.eval_seeds}",
            "--set", f"measure_attempts={args.measure_attempts}",
            *(["--threshold", str(threshold)] if threshold is not None else []),
        ]
    )  # fmt: skip
    summary = json.load(open(os.path.join(run_out, "summary.json")))
    evals = [json.loads(line) for line in open(os.path.join(run_out, "eval.jsonl")) if line.strip()]
    return {
        "regulariser": reg,
        "beta": None if reg == "none" else beta,
        "lr": args.lr,
        "steps": args.steps,
        "wall_seconds": time.perf_counter() - start,
        "base": summary["before"],
        "after": summary["after"],
        "curve": [{k: e.get(k) for k in CURVE_KEYS} for e in evals],
    }


def gap_closed(before: float, after: float) -> float:
    """The share of the gap to 100% that a run closes: ``(after - before) / (1 - before)``, rates in [0, 1]."""
    return (after - before) / (1.0 - before) if before < 1.0 else float("nan")


def figures(evaluation: dict, base: dict) -> dict:
    """One table row's figures from an evaluation (``rfft.evaluate.Evaluator``) against the base row's."""
    nan = float("nan")
    rfnet, inspector = evaluation["argmax_rate"], evaluation.get("inspector_available_rate", nan)
    return {
        "rfnet_ava": rfnet,
        "rfnet_at_threshold": evaluation["available_rate"],
        "inspector_ava": inspector,
        "gap_closed_rfnet": gap_closed(base["argmax_rate"], rfnet),
        "gap_closed_rfnet_at_threshold": gap_closed(base["available_rate"], evaluation["available_rate"]),
        "gap_closed_inspector": gap_closed(base.get("inspector_available_rate", nan), inspector),
        "mean_p_available": evaluation["mean_p_available"],
        "diversity": evaluation["diversity"],
        "diversity_ratio": evaluation["diversity"] / base["diversity"] if base["diversity"] else nan,
        "attempts_per_accepted": evaluation.get("measured", {}).get("attempts_per_accepted", nan),
    }


def rows(results: dict) -> list[tuple[str, str, dict]]:
    """``(name, regulariser, figures)`` of the base row and of each run, in the order they ran."""
    base = results["base"]
    return [("base", "base", figures(base, base))] + [
        (key, run["regulariser"], figures(run["after"], base)) for key, run in results["runs"].items()
    ]


def table(results: dict, points: list[tuple[str, str, dict]]) -> str:
    lines = [
        "| row | RFNet Ava (argmax) | RFNet @threshold | gap closed, RFNet | inspector Ava | gap closed, inspector "
        "| mean P(Available) | diversity (ratio) | attempts/accepted | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    walls = {key: run["wall_seconds"] for key, run in results["runs"].items()}
    for name, _, f in points:
        wall = f"{walls[name] / 60:.1f} min" if name in walls else "-"
        gaps = ("-", "-") if name == "base" else (f"{f['gap_closed_rfnet']:.2f}", f"{f['gap_closed_inspector']:.2f}")
        lines.append(
            f"| {name} | {100 * f['rfnet_ava']:.1f}% | {100 * f['rfnet_at_threshold']:.1f}% | {gaps[0]} "
            f"| {100 * f['inspector_ava']:.1f}% | {gaps[1]} | {f['mean_p_available']:.3f} "
            f"| {f['diversity']:.4f} ({f['diversity_ratio']:.2f}) | {f['attempts_per_accepted']:.2f} | {wall} |"
        )
    return "\n".join(lines)


COLOURS = {"base": "#000000", "none": "#d62728", "kl": "#ff7f0e", "cc": "#1f77b4"}


def ava_diversity_svg(points: list[tuple[str, str, dict]], width: int = 560, height: int = 380) -> str:
    """Ava against diversity, one labelled point per row: RFNet's Ava filled, the inspector's hollow."""
    left, right, top, bottom = 56, 110, 20, 44
    finite = [f["diversity"] for _, _, f in points if math.isfinite(f["diversity"])]
    x_max = 1.1 * max(finite, default=1.0) or 1.0

    def xy(diversity: float, ava: float) -> tuple[float, float]:
        return (left + (width - left - right) * diversity / x_max, top + (height - top - bottom) * (1 - ava))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    x0, y0 = xy(0, 0)
    x1, y1 = xy(x_max, 1)
    parts.append(f'<path d="M{x0},{y1} V{y0} H{x1}" fill="none" stroke="#444"/>')
    for tick in range(0, 101, 25):
        _, y = xy(0, tick / 100)
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    for i in range(5):
        x, _ = xy(x_max * i / 4, 0)
        parts.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{x_max * i / 4:.3f}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 8}" text-anchor="middle">diversity across seeds</text>')
    parts.append(f'<text x="14" y="{(y0 + y1) / 2:.1f}" transform="rotate(-90 14 {(y0 + y1) / 2:.1f})" '
                 'text-anchor="middle">Ava (held-out, first attempt)</text>')  # fmt: skip
    for name, reg, f in points:
        if not math.isfinite(f["diversity"]):
            continue
        colour = COLOURS.get(reg, "#2ca02c")
        x, y = xy(f["diversity"], f["rfnet_ava"])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
        parts.append(f'<text x="{x + 6:.1f}" y="{y + 4:.1f}" fill="{colour}">{name}</text>')
        if math.isfinite(f["inspector_ava"]):
            x, y = xy(f["diversity"], f["inspector_ava"])
            parts.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="none" stroke="{colour}"/>')
    legend_x = width - right + 10
    parts.append(f'<circle cx="{legend_x}" cy="{top + 6}" r="4" fill="#444"/>')
    parts.append(f'<text x="{legend_x + 8}" y="{top + 10}">RFNet</text>')
    parts.append(f'<rect x="{legend_x - 4}" y="{top + 18}" width="8" height="8" fill="none" stroke="#444"/>')
    parts.append(f'<text x="{legend_x + 8}" y="{top + 26}">inspector</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def save_grid(out: str, names: list[str], results: dict, held_out: str, n_products: int) -> dict:
    """A PNG of the same held-out products and seeds for each named row, side by side: one line per
    product, each row's seeds in a block, generated exactly as its run evaluated them."""
    import numpy as np
    from PIL import Image, ImageDraw

    from engine.models import build_pipeline
    from rfft.config import RFFTConfig
    from rfft.evaluate import Evaluator, generate_rows, load_products
    from rfft.train import CONTROLNET_DIR

    products = load_products(held_out, limit=n_products)
    blocks = []
    for name in names:
        # "base" is the starting ControlNet of every run: the generator of the first run's config as given
        run = next(iter(results["runs"])) if name == "base" else name
        cfg = RFFTConfig.from_dict(json.load(open(os.path.join(out, run, "config.json"))))
        gen = cfg.generator
        if name != "base":
            gen.controlnet = os.path.join(out, name, CONTROLNET_DIR)
        pipe = build_pipeline(gen)
        rows_by_seed = Evaluator(products, gen, None, cfg.eval_run_seed, cfg.eval_seeds).rows
        seeds = [generate_rows(pipe, pipe.controlnet, rows, gen) for rows in rows_by_seed]  # K x (P, S, S, 3)
        block = np.concatenate(seeds, axis=2)  # (P, S, K * S, 3): a product's seeds side by side
        blocks.append(block.reshape(-1, *block.shape[2:]))
    gap = np.full((blocks[0].shape[0], 8, 3), 255, np.uint8)
    body = np.concatenate([x for b in blocks for x in (b, gap)][:-1], axis=1)
    header = Image.new("RGB", (body.shape[1], 16), "white")
    draw = ImageDraw.Draw(header)
    for i, name in enumerate(names):
        draw.text((i * (blocks[0].shape[1] + gap.shape[1]) + 2, 2), name, fill="black")
    path = os.path.join(out, "grid.png")
    Image.fromarray(np.concatenate([np.asarray(header), body], axis=0)).save(path)
    return {"path": path, "rows": names, "products": len(products), "seeds": len(rows_by_seed)}


if __name__ == "__main__":
    raise SystemExit(main())
