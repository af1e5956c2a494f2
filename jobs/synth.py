"""``adloop synth rf1m --n N --out DIR --seed S``: write a synthetic RF1M-format dataset with programmatic defects.

See ``rfnet/synth.py`` for how each label is produced.
"""

from __future__ import annotations

import json
import logging

from jobs.args import HelpFormatter, job_parser


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("adloop synth", __doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser(
        "rf1m",
        help="RF1M layout: generated/, product/, depth/, saliency/, label.txt, caption.txt",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--n", type=int, required=True, help="number of generated images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="everything is a pure function of the seed")
    p.add_argument("--size", type=int, default=64, help="image side in px")
    p.add_argument("--images-per-product", type=int, default=4, help="images (scenes) per product")
    p.add_argument("--available-rate", type=float, default=0.55, help="share of Available among good cutouts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from rfnet.synth import generate_rf1m

    counts = generate_rf1m(
        args.out, args.n, seed=args.seed, size=args.size,
        images_per_product=args.images_per_product, available_rate=args.available_rate,
    )  # fmt: skip
    print(json.dumps({"out": args.out, "counts": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
