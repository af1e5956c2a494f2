"""How many of a refresh's accepted images the inspector accepts too (the demo's "inspector agrees").

Reads ``OUT/results`` (one final row per SKU), lays each accepted SKU's cutout out again exactly as the
refresh did (``engine.prepare.condition_row``: same canvas, attempt and prompt policy), and judges the
shipped image with ``rfnet.inspector.Inspector``. Prints each accepted SKU's verdict and the share the
inspector accepts.

    python bench/inspector_agreement.py out/demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="an adloop refresh output folder")
    args = p.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    import yaml
    from PIL import Image

    from engine.config import ConditioningConfig
    from engine.prepare import PromptPolicy, condition_row, read_image_bytes
    from rfnet.inspector import Inspector

    with open(os.path.join(args.out, "config.yaml")) as f:
        size = int(yaml.safe_load(f).get("size") or 128)
    rows = pq.read_table(os.path.join(args.out, "results")).to_pylist()
    inspector, verdicts = Inspector(), []
    for row in rows:
        if row["status"] != "accepted":
            continue
        image_path = (
            row["image_path"] if os.path.isabs(row["image_path"]) else os.path.join(args.out, row["image_path"])
        )
        if not os.path.isfile(image_path):  # older outputs stored paths relative to the job's directory
            image_path = row["image_path"]
        image = np.asarray(Image.open(image_path).convert("RGB"))
        cond = condition_row(row["sku_id"], read_image_bytes(row["image_uri"]), row["image_uri"], row["attempts"],
                             ConditioningConfig(size=image.shape[0]), PromptPolicy(), row["caption"] or "")  # fmt: skip
        verdict = inspector.judge(cond["product_rgba"], image, row["caption"] or "")
        verdicts.append({"sku_id": row["sku_id"], "attempts": row["attempts"], "inspector": verdict.label})
    agree = sum(v["inspector"] == "Available" for v in verdicts)
    print(json.dumps({"accepted": len(verdicts), "inspector_accepts": agree,
                      "agreement": agree / len(verdicts) if verdicts else None, "canvas": size,
                      "verdicts": verdicts}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
