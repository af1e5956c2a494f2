"""An RFNet checkpoint on generated images of held-out products, scored against the inspector's labels.

The set is an RF1M of generated images (``adloop synth rf1m --from-generator``, products of a world seed
the model never trained on). Each image is scored by ``rfnet.Scorer`` exactly as the refresh job scores
it: depth and saliency computed on the fly by the given models, the checkpoint's threshold. Prints AP on
Available, the accuracy, the share of accepted images the inspector accepts too (the demo's "inspector
agrees" figure) and the confusion matrix; ``--output`` writes them as JSON.

``--calibrate P`` finds the lowest threshold whose precision on Available reaches P on this set (a
calibration set: products neither training nor evaluation used), and ``--write-threshold`` stores it in
the checkpoint folder as its default, the threshold production gates on (docs/paper.md, section 8).

    python bench/rfnet_on_generated.py --rfnet toy --data data/gen_rf1m_heldout
    python bench/rfnet_on_generated.py --rfnet CKPT --data data/gen_rf1m_calib --calibrate 0.85 --write-threshold
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import example_images  # noqa: E402


def score_generated_set(
    rfnet: str,
    data: str,
    depth: str = "toy",
    saliency: str = "toy",
    batch_size: int = 64,
    target_precision: float | None = None,
) -> dict:
    """AP on Available, accuracy, acceptance agreement and confusion of ``rfnet`` on the generated set ``data``;
    with ``target_precision``, also the lowest threshold reaching it on Available (``calibrated_threshold``,
    None when none does)."""
    import numpy as np

    from rfnet import Scorer
    from rfnet.config import LABELS
    from rfnet.data import read_rf1m
    from rfnet.metrics import average_precision, calibrate_threshold, confusion_matrix

    examples = read_rf1m(data)
    scorer = Scorer(rfnet, device="cpu", depth=depth, saliency=saliency)
    probs, accepted = [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        pairs = [example_images(e) for e in chunk]
        images, cutouts = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        result = scorer.score(cutouts, images, [e.caption for e in chunk])
        probs.append(result.probabilities)
        accepted.append(result.accepted)
    probs, accepted = np.concatenate(probs), np.concatenate(accepted)
    labels = np.array([e.label for e in examples])
    inspector_ok = labels == 0
    calibrated = {}
    if target_precision is not None:
        calibrated["calibrated_threshold"] = calibrate_threshold(probs[:, 0], inspector_ok, target_precision)
    return {
        "rfnet": rfnet, "data": data, "n": len(examples), "threshold": scorer.threshold,
        "inspector_available": int(inspector_ok.sum()),
        "ap_available": average_precision(inspector_ok, probs[:, 0]),
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "rfnet_accepted": int(accepted.sum()),
        "inspector_agrees_with_accepted": float(inspector_ok[accepted].mean()) if accepted.any() else float("nan"),
        "confusion": confusion_matrix(labels, probs.argmax(1)).tolist(), "labels": list(LABELS),
        **calibrated,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rfnet", required=True, help="RFNet checkpoint folder or toy")
    p.add_argument("--data", required=True, help="a generated RF1M folder (labels: the inspector's)")
    p.add_argument("--depth", default="toy")
    p.add_argument("--saliency", default="toy")
    p.add_argument("--output")
    p.add_argument("--calibrate", type=float, metavar="P", help="find the threshold for precision P on Available")
    p.add_argument("--write-threshold", action="store_true", help="store the --calibrate threshold in --rfnet")
    args = p.parse_args()
    if args.write_threshold and args.calibrate is None:
        p.error("--write-threshold needs --calibrate P")
    out = score_generated_set(args.rfnet, args.data, args.depth, args.saliency, target_precision=args.calibrate)
    if args.calibrate is not None:
        if out["calibrated_threshold"] is None:
            raise SystemExit(f"no threshold reaches precision {args.calibrate} on Available in {args.data}")
        if args.write_threshold:
            from rfnet.checkpoint import set_threshold

            set_threshold(args.rfnet, out["calibrated_threshold"])
    print(json.dumps(out, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
