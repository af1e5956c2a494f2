"""The human loop closed in the toy world: the inspector plays the reviewer, RFNet learns from its labels.

1. ``adloop refresh`` of ``--products`` world products (world seed ``--seed``, cutouts as a catalog holds
   them) with the toy generator, the toy RFNet and the toy maps;
2. the inspector reviews the needs_review queue and the audit sample through ``engine.review`` (the same
   ``ReviewSession.decide`` the review page posts to): it labels every candidate and accepts the first it
   calls Available;
3. ``adloop review export`` writes those labels as an RF1M set (maps by the toy models);
4. ``adloop train-rfnet --init-from`` fine-tunes the toy RFNet on them;
5. RFNet's AP against the inspector on held-out generated images (``--held-out``, an RF1M from
   ``adloop synth rf1m --from-generator`` of other products), before and after.

    python bench/review_loop.py --out runs/review_loop --held-out data/gen_rf1m_heldout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ADLOOP = os.path.join(os.path.dirname(sys.executable), "adloop")


def write_catalog(out: str, n: int, seed: int, size: int) -> str:
    """A JSONL manifest of ``n`` world products (RGBA PNG cutouts with their captions)."""
    from toy.rf1m import product_cutouts

    folder = os.path.join(out, "products")
    os.makedirs(folder, exist_ok=True)
    manifest = os.path.join(out, "catalog.jsonl")
    with open(manifest, "w") as f:
        for p in product_cutouts(n, seed, size):
            path = os.path.join(folder, f"{p['sku_id']}.png")
            with open(path, "wb") as g:
                g.write(p["image_bytes"])
            f.write(json.dumps({"sku_id": p["sku_id"], "image_uri": path, "caption": p["caption"]}) + "\n")
    return manifest


def inspector_reviews(out: str) -> dict:
    """Label every candidate of both queues with the inspector; returns the counts of what it decided."""
    import numpy as np
    from PIL import Image

    from bench.inspector_agreement import judge_shipped
    from engine.prepare import read_image_bytes
    from engine.review import QUEUES, ReviewSession
    from rfnet.inspector import Inspector

    session, inspector = ReviewSession(out), Inspector()
    counts = {q: {"skus": 0, "accepted": 0, "labels": {}} for q in QUEUES}
    for queue in QUEUES:
        for item in session.items(queue):
            caption = item["caption"]
            row = session.index[(queue, item["sku_id"])].row
            product = read_image_bytes(row["image_uri"])
            labels = {}
            for c in item["candidates"]:
                path, _ = session.image_file(queue, item["index"], c["id"])
                image = np.asarray(Image.open(path).convert("RGB"))
                labels[c["id"]] = judge_shipped(inspector, item["sku_id"], product, row["image_uri"], c["attempt"],
                                                caption, image)  # fmt: skip
            accept = next((cid for cid, label in labels.items() if label == "Available"), None)
            session.decide({"sku_id": item["sku_id"], "queue": queue, "accept": accept, "labels": labels})
            counts[queue]["skus"] += 1
            counts[queue]["accepted"] += accept is not None
            for label in labels.values():
                counts[queue]["labels"][label] = counts[queue]["labels"].get(label, 0) + 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--held-out", required=True, help="a generated RF1M of other products (the inspector's labels)")
    p.add_argument("--products", type=int, default=100)
    p.add_argument("--seed", type=int, default=500, help="world seed of the refreshed products")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    args = p.parse_args()

    from bench.rfnet_on_generated import score_generated_set

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    refresh_out, export, tuned = (os.path.join(args.out, d) for d in ("refresh", "export", "tuned"))
    timings = {}
    catalog = write_catalog(args.out, args.products, args.seed, args.size)
    t = time.perf_counter()
    subprocess.run([ADLOOP, "refresh", "--input", catalog, "--output", refresh_out, "--base-model", "toy",
                    "--rfnet", "toy", "--depth", "toy", "--saliency", "toy"], check=True, env=env)  # fmt: skip
    timings["refresh_s"] = time.perf_counter() - t
    with open(os.path.join(refresh_out, "summary.json")) as f:
        refresh = json.load(f)["status"]
    t = time.perf_counter()
    reviewed = inspector_reviews(refresh_out)
    timings["review_s"] = time.perf_counter() - t
    subprocess.run([ADLOOP, "review", "export", refresh_out, "--to", export, "--depth", "toy", "--saliency", "toy"],
                   check=True, env=env)  # fmt: skip
    t = time.perf_counter()
    subprocess.run([ADLOOP, "train-rfnet", "--data", export, "--init-from", "toy", "--output", tuned,
                    "--epochs", str(args.epochs), "--workers", "2", "--depth", "toy", "--saliency", "toy"],
                   check=True, env=env)  # fmt: skip
    timings["fine_tune_s"] = time.perf_counter() - t
    before = score_generated_set("toy", args.held_out)
    after = score_generated_set(os.path.join(tuned, "rfnet"), args.held_out)
    keys = ("ap_available", "accuracy", "rfnet_accepted", "inspector_agrees_with_accepted")
    result = {"refresh": refresh, "reviewed": reviewed, "timings": timings,
              "before": {k: before[k] for k in keys}, "after": {k: after[k] for k in keys}}  # fmt: skip
    with open(os.path.join(args.out, "loop.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
