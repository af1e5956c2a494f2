"""``adloop train-generator`` / ``python -m jobs.train_generator``: train the toy generator from scratch.

An SD 1.5-shaped pipeline (VAE, CLIP text encoder, UNet, ControlNet-canny) learns the synthetic world, in
the standard stages (VAE; UNet + text encoder; ControlNet), each under Ray Train (DDP or DeepSpeed)::

    adloop synth scenes --n 4000 --out data/scenes --seed 0 --size 128
    adloop train-generator --data data/scenes --output runs/toy-generator
    adloop refresh --base-model runs/toy-generator/pipeline --input ... --output ...

Running the same command again resumes: finished stages are skipped, the running one restarts from its
last checkpoint. Writes ``<output>/pipeline`` (a diffusers folder) and ``<output>/train_log.json`` (loss
curves and wall time per stage). The shipped ``toy`` preset is a copy of such a ``pipeline`` folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    from toy.train_generator import STAGES, GeneratorTrainConfig

    d = GeneratorTrainConfig(data="", output="")
    p = argparse.ArgumentParser(
        prog="adloop train-generator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="scene set folder (adloop synth scenes)")
    p.add_argument("--output", required=True, help="output folder (ray/, components/, pipeline/, train_log.json)")
    p.add_argument(
        "--name", default=d.name, help=f"run-name prefix; same --output and --name resumes (default {d.name})"
    )
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list, in order (default {','.join(STAGES)})")
    for stage in STAGES:
        default = d.steps_of(stage)
        p.add_argument(
            f"--{stage}-steps", type=int, default=default, help=f"optimizer steps of stage {stage} (default {default})"
        )
    p.add_argument(
        "--vae-batch-size",
        type=int,
        default=d.vae_batch_size,
        help=f"VAE batch per worker (default {d.vae_batch_size})",
    )
    p.add_argument(
        "--vae-crop",
        type=int,
        default=d.vae_crop,
        help=f"VAE training crop side, 0 = whole images (default {d.vae_crop})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"UNet/ControlNet batch per worker (default {d.batch_size})",
    )
    p.add_argument("--vae-lr", type=float, default=d.vae_lr, help=f"VAE learning rate (default {d.vae_lr:g})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"UNet/ControlNet learning rate (default {d.lr:g})")
    p.add_argument(
        "--prompt-dropout",
        type=float,
        default=d.prompt_dropout,
        help=f"share of unconditional prompts (default {d.prompt_dropout:g})",
    )
    p.add_argument("--strategy", default=d.strategy, choices=["ddp", "deepspeed"], help=f"(default {d.strategy})")
    p.add_argument(
        "--zero-stage", type=int, default=d.zero_stage, help=f"DeepSpeed ZeRO stage 0-2 (default {d.zero_stage})"
    )
    p.add_argument("--workers", type=int, default=d.num_workers, help=f"Ray Train workers (default {d.num_workers})")
    p.add_argument("--cpus-per-worker", type=int, default=d.cpus_per_worker, help=f"(default {d.cpus_per_worker})")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument(
        "--log-every", type=int, default=d.log_every, help=f"steps per loss-curve point (default {d.log_every})"
    )
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"(default {d.checkpoint_every})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from toy.scenes import SceneSetError
    from toy.train_generator import GeneratorTrainConfig, fit

    try:
        cfg = GeneratorTrainConfig(
            data=args.data, output=args.output, name=args.name, stages=tuple(s for s in args.stages.split(",") if s),
            vae_steps=args.vae_steps, unet_steps=args.unet_steps, controlnet_steps=args.controlnet_steps,
            vae_batch_size=args.vae_batch_size, vae_crop=args.vae_crop, batch_size=args.batch_size, vae_lr=args.vae_lr, lr=args.lr,
            prompt_dropout=args.prompt_dropout, strategy=args.strategy, zero_stage=args.zero_stage,
            num_workers=args.workers, cpus_per_worker=args.cpus_per_worker, use_gpu=args.gpu, seed=args.seed,
            log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        )  # fmt: skip
        log = fit(cfg)
    except (SceneSetError, ValueError, FileNotFoundError) as e:
        print(f"adloop train-generator: {e}", file=sys.stderr)
        return 2
    summary = {stage: {k: v for k, v in info.items() if k != "curve"} for stage, info in log["stages"].items()}
    print(json.dumps({"output": args.output, "pipeline": log.get("pipeline"), "stages": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
