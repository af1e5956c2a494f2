"""``adloop synth rf1m|scenes --n N --output DIR --seed S``: write synthetic data sets.

- ``rf1m``: an RF1M-format dataset with programmatic defects (see ``rfnet/synth.py`` for each label);
  with ``--toy-maps`` its depth and saliency maps are the toy models' maps of each image instead of the
  renderer's;
- ``rf1m --from-generator``: an RF1M of *generated* images: the generator's outputs for ``--n`` products
  of the world, labelled by the inspector, maps by ``--depth`` / ``--saliency`` (``toy/rf1m.py``);
- ``scenes``: the toy generator's training scenes (``toy/scenes.py``), Parquet shards + ``scenes.json``.
"""

from __future__ import annotations

import json
import logging
import sys

from jobs import args as opts
from jobs.args import HelpFormatter, add, job_parser
from jobs.config import parse, write_resolved_config
from rfnet.config import TOY_PRESET


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("adloop synth", __doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser(
        "rf1m",
        help="RF1M layout: generated/, product/, depth/, saliency/, label.txt, caption.txt",
        formatter_class=HelpFormatter,
    )
    opts.CONFIG.add(p)
    add(p, "--n", type=int, required=True, help="number of generated images")
    opts.OUTPUT.add(p, required=True)
    opts.SEED.add(p)
    add(p, "--render-size", type=int, default=64, help="side in px of the rendered images [old spelling: --size]")
    add(p, "--images-per-product", type=int, default=4, help="images (scenes) per product")
    add(p, "--available-rate", type=float, default=0.55, help="share of Available among good cutouts")
    add(p, "--toy-maps", action="store_true",
        help="store the toy depth/saliency models' maps of each image instead of the renderer's ideal maps")  # fmt: skip
    g = p.add_argument_group("--from-generator: generated images judged by the inspector (--n = products)")
    add(g, "--from-generator", action="store_true", help="write the generator's images, not renders")
    for option in (opts.BASE_MODEL, opts.CONTROLNET, opts.STEPS, opts.GUIDANCE_SCALE, opts.DEPTH, opts.SALIENCY):
        option.add(g)
    add(g, "--canvas", type=int, help="generation canvas side in px (default: the model's, 128 for toy)")
    p.set_defaults(base_model=TOY_PRESET, depth=TOY_PRESET, saliency=TOY_PRESET)  # the trained toy world
    s = sub.add_parser(
        "scenes",
        help="training scenes of the toy generator: Parquet shards + scenes.json",
        formatter_class=HelpFormatter,
    )
    opts.CONFIG.add(s)
    add(s, "--n", type=int, required=True, help="number of scenes (one product each)")
    opts.OUTPUT.add(s, required=True)
    opts.SEED.add(s)
    add(s, "--render-size", type=int, default=128, help="canvas side in px of the scenes")
    opts.PROMPTS.add(s)
    argv = list(argv if argv is not None else sys.argv[1:])
    if argv[:1] == ["rf1m"]:
        # --size was this job's image side until this release; the generator's --size is the canvas side.
        argv = ["--render-size" if a == "--size" else a for a in argv]
    args = parse(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.kind == "scenes":
        from toy.scenes import write_scenes

        write_resolved_config(args, args.output)
        counts = write_scenes(args.output, args.n, seed=args.seed, size=args.render_size, prompts=args.prompts)
        print(json.dumps({"out": args.output, "counts": counts}))
        return 0

    write_resolved_config(args, args.output)
    if args.from_generator:
        from engine.config import GeneratorConfig
        from toy.rf1m import write_generated_rf1m

        gen = GeneratorConfig.for_model(
            args.base_model, size=args.canvas, steps=args.steps, controlnet=args.controlnet,
            guidance_scale=args.guidance_scale,
        )  # fmt: skip
        result = write_generated_rf1m(
            args.output, args.n, gen, images_per_product=args.images_per_product, seed=args.seed,
            depth=args.depth, saliency=args.saliency,
        )  # fmt: skip
        print(json.dumps({"out": args.output, "counts": result["counts"], "seconds": result["seconds"]}))
        return 0

    from rfnet.synth import generate_rf1m

    counts = generate_rf1m(
        args.output, args.n, seed=args.seed, size=args.render_size,
        images_per_product=args.images_per_product, available_rate=args.available_rate,
    )  # fmt: skip
    if args.toy_maps:
        from toy.rf1m import write_maps

        write_maps(args.output, TOY_PRESET, TOY_PRESET)
    print(json.dumps({"out": args.output, "counts": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
