"""``adloop train-generator`` / ``python -m jobs.train_generator``: train the toy generator from scratch.

An SD 1.5-shaped pipeline (VAE, CLIP text encoder, UNet, ControlNet-canny) learns the synthetic world, in
the standard stages (VAE; UNet + text encoder; ControlNet), each under Ray Train (DDP or DeepSpeed)::

    adloop synth scenes --n 4000 --output data/scenes --seed 0
    adloop train-generator --data data/scenes --output runs/toy-generator
    adloop refresh --base-model runs/toy-generator/pipeline --input ... --output ...

Running the same command again resumes: finished stages are skipped, the running one restarts from its
last checkpoint. Writes ``<output>/pipeline`` (a diffusers folder), ``<output>/train_log.json`` (loss
curves and wall time per stage) and ``<output>/config.yaml`` (the job's options, once it ends). The shipped ``toy`` preset
is a copy of such a ``pipeline`` folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs import args as opts
from jobs.args import add, job_parser, one_value
from jobs.config import parse, write_resolved_config


def _parser() -> argparse.ArgumentParser:
    from toy.config import STAGES, GeneratorTrainConfig

    d = GeneratorTrainConfig(data="", output="")
    p = job_parser("adloop train-generator", __doc__)
    opts.DATA.add(p, required=True)
    opts.OUTPUT.add(p, required=True)
    opts.RUN_NAME.add(p, recipe_default=d.name)
    add(p, "--stages", default=",".join(STAGES), help="comma list of stages to run, in recipe order")
    for stage in STAGES:
        add(p, f"--{stage}-steps", type=int, default=d.steps_of(stage), help=f"optimizer steps of stage {stage}")
    add(p, "--vae-batch-size", type=int, default=d.vae_batch_size, help="VAE crops per worker per step")
    add(p, "--vae-crop", type=int, default=d.vae_crop, help="side of the VAE's training crops (0 = whole images)")
    opts.BATCH_SIZE.add(p, recipe_default=f"{d.batch_size}, for the UNet and ControlNet stages")
    add(p, "--vae-lr", type=float, default=d.vae_lr, help="AdamW learning rate of the VAE stage")
    opts.LR.add(p, recipe_default=f"{d.lr:g}, for the UNet and ControlNet stages")
    add(p, "--prompt-dropout", type=float, default=d.prompt_dropout, help="share of unconditional prompts")
    add(p, "--inpaint-share", type=float, default=d.inpaint_share,
        help="share of UNet/ControlNet samples trained as generation shows them (product-on-white latents "
        "outside the paint mask, loss on the painted cells)")  # fmt: skip
    for option in (opts.STRATEGY, opts.ZERO_STAGE, opts.WORKERS, opts.CPUS_PER_WORKER, opts.GPU, opts.SEED):
        option.add(p)
    add(p, "--log-every", type=int, default=d.log_every, help="steps per loss-curve point")
    add(p, "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from toy.config import GeneratorTrainConfig
    from toy.scenes import SceneSetError
    from toy.train_generator import fit

    recipe = {"name": args.name, "batch_size": args.batch_size, "lr": args.lr}
    try:
        cfg = GeneratorTrainConfig(
            data=one_value(args.data, "--data"), output=args.output, stages=tuple(s for s in args.stages.split(",") if s),
            vae_steps=args.vae_steps, unet_steps=args.unet_steps, controlnet_steps=args.controlnet_steps,
            vae_batch_size=args.vae_batch_size, vae_crop=args.vae_crop, vae_lr=args.vae_lr,
            prompt_dropout=args.prompt_dropout, inpaint_share=args.inpaint_share, strategy=args.strategy, zero_stage=args.zero_stage,
            num_workers=args.workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.gpu, seed=args.seed,
            log_every=args.log_every, checkpoint_every=args.checkpoint_every,
            **{k: v for k, v in recipe.items() if v is not None},
        )  # fmt: skip
        log = fit(cfg)
        write_resolved_config(args, args.output)  # after fit: a set it refuses leaves no output
    except (SceneSetError, ValueError, FileNotFoundError) as e:
        print(f"adloop train-generator: {e}", file=sys.stderr)
        return 2
    summary = {stage: {k: v for k, v in info.items() if k != "curve"} for stage, info in log["stages"].items()}
    print(json.dumps({"output": args.output, "pipeline": log.get("pipeline"), "stages": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
