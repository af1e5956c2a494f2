"""Command-line options shared by the jobs: the help formatter every job uses, and the generator's options.

This module is imported while a job builds its parser, so it must stay light: no torch, diffusers,
transformers, ray, cv2 or pyarrow here, nor in what it imports (``tests/test_jobs_help.py`` checks it).
"""

from __future__ import annotations

import argparse
import re

from engine.config import SCHEDULERS, ConditioningConfig, GeneratorConfig

# Presets are random-weight models; the tiny one is only fast at small canvases and few steps.
PRESET_DEFAULTS = {"tiny": {"size": 128, "steps": 10}}
REAL_DEFAULTS = {"size": 512, "steps": 40}


_ROLE = re.compile(r":(?:class|func|mod|data|attr|meth):`~?([^`]+)`")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the job's docstring layout, drops its reST markup, and shows every option's default.

    A default is appended to an option's help unless the help already states one (``default`` in the text),
    the option is a flag, or it has no default (``None``; the help then says what happens without it).
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = _ROLE.sub(r"\1", text).replace("``", "").replace("::\n", ":\n")
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = (action.help or "").replace("``", "")
        if "default" in help_.lower() or not action.option_strings:
            return help_
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._AppendAction)):
            return help_
        if action.default is None or action.default is argparse.SUPPRESS:
            return help_
        return f"{help_} (default: %(default)s)" if help_ else "(default: %(default)s)"


def job_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``adloop <job>``: its module docstring as the description, and :class:`HelpFormatter`."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def add_generator_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generator")
    g.add_argument(
        "--base-model",
        default="tiny",
        help="tiny | sd15 (random-weight presets) | diffusers folder | single-file .safetensors (default: tiny)",
    )
    g.add_argument(
        "--controlnet",
        default=None,
        help="diffusers ControlNet folder (needed with a real base model; e.g. an RFFT output)",
    )
    g.add_argument(
        "--base-config",
        default=None,
        help="for a single-file checkpoint: a diffusers SD 1.5 folder with its configs and tokenizer",
    )
    g.add_argument("--lora", default=None, help="LoRA .safetensors file to fuse")
    g.add_argument("--lora-scale", type=float, default=0.8, help="LoRA strength (default 0.8; 0 = no effect)")
    g.add_argument(
        "--scheduler",
        default="ddim",
        help=f"{' | '.join(SCHEDULERS)} (also 'Euler a', 'DPM++ SDE Karras'; default ddim)",
    )
    g.add_argument("--size", type=int, default=None, help="canvas side in px (default 128 for tiny, else 512)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default 10 for tiny, else 40)")
    g.add_argument("--guidance", type=float, default=7.5, help="CFG scale (default 7.5)")
    g.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet scale (default 1.0)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="weight precision on GPU (CPU is always fp32)",
    )
    c = p.add_argument_group("conditioning")
    c.add_argument("--prompts", default=None, help="prompt config JSON in the authors' format (default: bundled)")
    c.add_argument("--keep-loc", action="store_true", help="keep the product's original placement instead of centring")
    c.add_argument("--mix-caption", action="store_true", help="prefix each product's caption to the prompt")
    c.add_argument(
        "--seed", type=int, default=0, help="run seed; every image's seed derives from (seed, sku, attempt)"
    )


def generator_config(args: argparse.Namespace) -> GeneratorConfig:
    defaults = PRESET_DEFAULTS.get(args.base_model, REAL_DEFAULTS)
    return GeneratorConfig(
        base_model=args.base_model,
        controlnet=args.controlnet,
        base_config=args.base_config,
        lora=args.lora,
        lora_scale=args.lora_scale,
        scheduler=args.scheduler,
        size=args.size or defaults["size"],
        steps=args.steps or defaults["steps"],
        guidance_scale=args.guidance,
        conditioning_scale=args.conditioning_scale,
        device=args.device,
        dtype=args.dtype,
    )


def conditioning_config(args: argparse.Namespace, size: int) -> ConditioningConfig:
    return ConditioningConfig(size=size, keep_loc=args.keep_loc)
