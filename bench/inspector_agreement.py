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


def judge_shipped(inspector, sku_id: str, product: bytes, image_uri: str, attempt: int, caption: str, image) -> str:
    """The inspector's label of ``image`` (RGB uint8), the SKU's attempt ``attempt``, with its cutout laid out
    again exactly as the refresh laid it out (``engine.prepare.condition_row`` on the image's canvas)."""
    from engine.config import ConditioningConfig
    from engine.prepare import PromptPolicy, condition_row

    cond = condition_row(sku_id, product, image_uri, attempt, ConditioningConfig(size=image.shape[0]), PromptPolicy(),
                         caption)  # fmt: skip
    return inspector.judge(cond["product_rgba"], image, caption).label


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="an adloop refresh output folder")
    args = p.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from engine.outputs import output_file
    from engine.prepare import read_image_bytes
    from rfnet.inspector import Inspector

    size = None
    rows = pq.read_table(os.path.join(args.out, "results")).to_pylist()
    inspector, verdicts = Inspector(), []
    for row in rows:
        if row["status"] != "accepted":
            continue
        image_path = output_file(args.out, row["image_path"])
        if not os.path.isfile(image_path):  # older outputs stored paths relative to the job's directory
            image_path = row["image_path"]
        image = np.asarray(Image.open(image_path).convert("RGB"))
        size = image.shape[0]
        label = judge_shipped(inspector, row["sku_id"], read_image_bytes(row["image_uri"]), row["image_uri"],
                              row["attempts"], row["caption"] or "", image)  # fmt: skip
        verdicts.append({"sku_id": row["sku_id"], "attempts": row["attempts"], "inspector": label})
    agree = sum(v["inspector"] == "Available" for v in verdicts)
    print(json.dumps({"accepted": len(verdicts), "inspector_accepts": agree,
                      "agreement": agree / len(verdicts) if verdicts else None, "canvas": size,
                      "verdicts": verdicts}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
