"""The toy generator on held-out products: its first-attempt available rate, the defects of its rejects,
its diversity across seeds, and a picture of its outputs beside renders of the same products.

    python bench/toy_generator.py --out runs/bench_toy_generator [--rfnet RFNET_CHECKPOINT] \\
        [--base-model toy] [--depth toy --saliency toy] [--products 60] [--seeds 3] [--product-seed 909]

The products are drawn by the synthetic world with ``--product-seed`` (never used to train the generator
or the judge), their cutouts laid out by the engine as in ``adloop refresh``; every product is kept,
damaged cutouts included, as a real catalog has them. The judge is the inspector (``rfnet.inspector``) or
an RFNet checkpoint, which ``rfft.evaluate`` scores exactly as the refresh job does, with the inspector's
verdicts beside RFNet's. Writes ``<out>/metrics.json`` and ``<out>/grid.png``: one row
per product, a render of the product in an Available scene, then the generator's image for each seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_products(out: str, n: int, seed: int, size: int) -> str:
    """A JSONL manifest of ``n`` held-out product cutouts (RGBA PNGs, unplaced, as a catalog holds them)."""
    from toy.rf1m import product_cutouts

    folder = os.path.join(out, "products")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for pid, product in enumerate(product_cutouts(n, seed, size)):
        path = os.path.join(folder, f"h{pid:04d}.png")
        with open(path, "wb") as f:
            f.write(product["image_bytes"])
        rows.append({"sku_id": f"h{pid:04d}", "image_uri": path, "caption": product["caption"]})
    manifest = os.path.join(out, "held_out.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


def render_row(pid: int, seed: int, size: int, image_scale: float):
    """The product in an Available scene of the world, laid out like the generator's inputs."""
    import cv2
    import numpy as np

    from rfnet.synth import make_product, place, render

    product = place(make_product(pid, seed, 2 * size), image_scale)
    scene = render(product, "Available", np.random.default_rng([seed, pid, 99]))["generated"]
    return np.clip(np.rint(cv2.resize(scene, (size, size), interpolation=cv2.INTER_AREA) * 255), 0, 255).astype(
        np.uint8
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rfnet", default="inspector", help="the judge: inspector, or an RFNet checkpoint folder")
    p.add_argument("--out", required=True)
    p.add_argument("--base-model", default="toy")
    p.add_argument("--controlnet", default=None)
    p.add_argument("--depth", default="toy")
    p.add_argument("--saliency", default="toy")
    p.add_argument("--threshold", type=float, default=None, help="P(Available) threshold (default: the checkpoint's)")
    p.add_argument("--products", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--product-seed", type=int, default=909)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--grid-rows", type=int, default=6)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from engine.config import GeneratorConfig
    from engine.models import build_pipeline
    from rfft.evaluate import Evaluator, judges, load_products

    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    manifest = write_products(args.out, args.products, args.product_seed, args.size)
    gen = GeneratorConfig(
        base_model=args.base_model, controlnet=args.controlnet, size=args.size, steps=args.steps, device="cpu"
    )
    pipe = build_pipeline(gen)
    scorer, inspector = judges(args.rfnet, "cpu", args.threshold, args.depth, args.saliency)
    evaluator = Evaluator(load_products(manifest), gen, scorer, run_seed=0, n_seeds=args.seeds, inspector=inspector)
    start = time.perf_counter()
    metrics = evaluator(pipe, pipe.controlnet)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics.update(base_model=args.base_model, rfnet=args.rfnet, threshold=scorer.threshold, steps=args.steps)

    # The picture: a render of each product, then the generator's images of it for each seed.
    from engine.prompts import load_prompt_config

    scale = load_prompt_config()[0].image_scale
    rows = []
    from rfft.evaluate import generate_rows

    for i in range(min(args.grid_rows, args.products)):
        generated = [generate_rows(pipe, pipe.controlnet, [evaluator.rows[k][i]], gen)[0] for k in range(args.seeds)]
        rows.append(np.concatenate([render_row(i, args.product_seed, args.size, scale), *generated], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(os.path.join(args.out, "grid.png"))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
