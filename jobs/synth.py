"""``adloop synth rf1m --n N --out DIR --seed S``: write a synthetic RF1M-format dataset with programmatic defects.

See ``rfnet/synth.py`` for how each label is produced.
"""

from __future__ import annotations

import argparse
import json
import logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adloop synth", description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("rf1m", help="RF1M layout: generated/, product/, depth/, saliency/, label.txt, caption.txt")
    p.add_argument("--n", type=int, required=True, help="number of generated images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="everything is a pure function of the seed")
    p.add_argument("--size", type=int, default=64, help="image side in px")
    p.add_argument("--images-per-product", type=int, default=4, help="images (scenes) per product")
    p.add_argument("--available-rate", type=float, default=0.55, help="share of Available among good cutouts")
    s = sub.add_parser("scenes", help="training scenes of the toy generator: Parquet shards + scenes.json")
    s.add_argument("--n", type=int, required=True, help="number of scenes (one product each)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="everything is a pure function of the seed (default 0)")
    s.add_argument("--size", type=int, default=128, help="canvas side in px (default 128)")
    s.add_argument("--prompts", default=None, help="prompt config JSON in the authors' format (default: bundled)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.kind == "scenes":
        from toy.scenes import write_scenes

        counts = write_scenes(args.out, args.n, seed=args.seed, size=args.size, prompts=args.prompts)
        print(json.dumps({"out": args.out, "counts": counts}))
        return 0

    from rfnet.synth import generate_rf1m

    counts = generate_rf1m(
        args.out, args.n, seed=args.seed, size=args.size,
        images_per_product=args.images_per_product, available_rate=args.available_rate,
    )  # fmt: skip
    print(json.dumps({"out": args.out, "counts": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
