"""``adloop generate``: one attempt per product, no scoring, in a plain single-process loop.

The quickest look at what the generator makes of a set of products, and the plain-loop baseline the
refresh job's overhead benchmark compares against. Writes ``OUT/images/<safe id>.png`` and
``OUT/generate.jsonl`` (one line per input SKU: ok with the image path, or failed with the reason).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from jobs import args as opts
from jobs.args import add_generator_args, conditioning_config, generator_config, job_parser
from jobs.config import parse, write_resolved_config

logger = logging.getLogger("adloop.generate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("adloop generate", __doc__)
    opts.INPUT.add(p, required=True)
    opts.OUTPUT.add(p, required=True)
    opts.GEN_BATCH_SIZE.add(p)
    opts.LIMIT.add(p)
    add_generator_args(p)
    return parse(p, argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # Imported after parsing, so --help does not load torch and diffusers.
    from PIL import Image
    from tqdm import tqdm

    from engine.conditioning import ProductImageError
    from engine.generate import GenerateStage
    from engine.model_paths import describe
    from engine.paths import safe_name
    from engine.prepare import MissingImageError, PromptPolicy, condition_row, read_image_bytes, stack_rows
    from engine.prompts import load_prompt_config
    from engine.sources import iter_records

    gen_cfg = generator_config(args)
    cond_cfg = conditioning_config(args, gen_cfg.size)
    policy = PromptPolicy(templates=load_prompt_config(args.prompts), run_seed=args.seed)
    os.makedirs(os.path.join(args.output, "images"), exist_ok=True)
    write_resolved_config(args, args.output)
    stage = GenerateStage(gen_cfg)
    batch_size = args.gen_batch_size or (8 if stage.device.type == "cuda" else 4)
    models = describe(gen_cfg)
    counts = {"ok": 0, "failed": 0}
    start = time.perf_counter()
    with open(os.path.join(args.output, "generate.jsonl"), "w") as log, tqdm(desc="generate", unit="sku") as bar:
        pending: list[dict] = []

        def flush() -> None:
            if not pending:
                return
            out = stage(stack_rows(pending))
            for i, row in enumerate(pending):
                path = os.path.join(args.output, "images", safe_name(row["sku_id"]) + ".png")
                Image.fromarray(out["generated"][i]).save(path)
                log.write(
                    json.dumps(
                        {
                            "sku_id": row["sku_id"],
                            "status": "ok",
                            "image_path": path,
                            "seed": int(row["seed"]),
                            "prompt": row["prompt"],
                            **models,
                        }
                    )
                    + "\n"
                )
                counts["ok"] += 1
            bar.update(len(pending))
            pending.clear()

        for n, record in enumerate(iter_records(args.input)):
            if args.limit is not None and n >= args.limit:
                break
            try:
                if record.error:
                    raise ValueError(record.error)
                data = read_image_bytes(record.image_uri)
                pending.append(
                    condition_row(
                        record.sku_id, data, record.image_uri, 1, cond_cfg, policy, record.caption, record.prompt
                    )
                )
            except (ProductImageError, MissingImageError, ValueError) as err:
                log.write(json.dumps({"sku_id": record.sku_id, "status": "failed", "error": str(err)}) + "\n")
                counts["failed"] += 1
                bar.update(1)
            if len(pending) >= batch_size:
                flush()
        flush()
    seconds = time.perf_counter() - start
    print(f"generated {counts['ok']} images ({counts['failed']} failed) in {seconds:.1f}s -> {args.output}/images")
    return 0 if counts["ok"] or not counts["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
