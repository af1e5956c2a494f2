"""How learnable the inspector's labels of generated images are: its verdicts under imperceptible noise.

A learned judge sees what a person sees; a label that flips when each pixel moves by a few levels is one
no such judge can reproduce. For every image of a generated RF1M (``adloop synth rf1m --from-generator``),
the inspector judges ``--copies`` copies with Gaussian noise of ``--sigma`` (0-255 units) added. The share
of copies it calls Available is a "soft inspector" score; its AP against the stored (clean) labels is an
estimate of the best AP(Available) an image model can reach on the set. Near 1 means the labels follow
what the image shows; far below 1 means the 0.90 target would be out of reach whatever RFNet learns.

    python bench/inspector_stability.py data/gen_rf1m_heldout --copies 8 --sigma 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import example_images  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a generated RF1M folder (labels: the inspector's)")
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--sigma", type=float, default=3.0, help="noise standard deviation, 0-255 units")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import numpy as np

    from rfnet.data import read_rf1m
    from rfnet.inspector import Inspector
    from rfnet.metrics import average_precision

    inspector, rng = Inspector(), np.random.default_rng(args.seed)
    available, soft = [], []
    for e in read_rf1m(args.data):
        image, cutout = example_images(e)
        image = image.astype(np.float32)
        votes = []
        for _ in range(args.copies):
            noisy = np.clip(image + rng.normal(0.0, args.sigma, image.shape), 0, 255).astype(np.uint8)
            votes.append(inspector.judge(cutout, noisy, e.caption).label == "Available")
        available.append(e.label == 0)
        soft.append(float(np.mean(votes)))
    available, soft = np.array(available), np.array(soft)
    result = {
        "data": args.data, "n": len(soft), "available": int(available.sum()), "copies": args.copies,
        "sigma": args.sigma, "soft_inspector_ap": average_precision(available, soft),
        "available_flipped_by_most_copies": int((soft[available] < 0.5).sum()),
        "rejected_accepted_by_most_copies": int((soft[~available] >= 0.5).sum()),
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
