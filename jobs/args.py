"""Every job's command line is built here: the help formatter, and each option declared once.

An option a job shares with another (``--size``, ``--rfnet``, ``--output``, ...) is one :class:`Option` below,
with one name, one default and one help; its default comes from the package's config dataclass where it
has one (``GeneratorConfig``, ``RFFTConfig``). An option only one job has is declared in that job with
:func:`add`. Old spellings stay accepted as aliases for one release and are named in the help.
``tests/test_job_options.py`` checks that every option of every job comes from a declaration, that a flag
shared by jobs has one declaration, and that no flag is spelled two ways.

This module is imported while a job builds its parser, so it must stay light: no torch, diffusers,
transformers, ray, cv2 or pyarrow here, nor in what it imports (``tests/test_jobs_help.py`` checks it).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from engine.config import PRESET_SAMPLING, SCHEDULERS, ConditioningConfig, GeneratorConfig, ScorerConfig

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
    """The parser of ``adloop <job>``: its module docstring as the description, :class:`HelpFormatter`, and
    ``--config`` (read, with the ``name=value`` overrides, by ``jobs.config.parse``)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    CONFIG.add(parser)
    return parser


@dataclass(frozen=True)
class Option:
    """One command-line option: its flags (the name first, then old spellings kept for one release), help,
    default and argparse settings."""

    flags: tuple[str, ...]
    help: str
    default: Any = None
    type: Any = None
    choices: tuple | None = None
    action: str | None = None
    metavar: str | None = None

    @property
    def name(self) -> str:
        return self.flags[0]

    def add(self, parser, required: bool = False, recipe_default: Any = None) -> argparse.Action:
        """Add this option to ``parser`` (or an argument group); ``required`` is the one per-job setting.

        ``recipe_default`` is for the training options whose default belongs to each recipe's config (a batch
        size, a learning rate): the option's own default stays ``None`` (the job then takes its config's), and
        the help shows the recipe's value."""
        kwargs: dict[str, Any] = {"help": self.help}
        if recipe_default is not None:
            kwargs["help"] += f" (default: {recipe_default})"
        if len(self.flags) > 1:
            kwargs["help"] += f" [old spelling, kept for one release: {', '.join(self.flags[1:])}]"
        if self.action:
            kwargs["action"] = self.action
        if self.action != "store_true":
            kwargs["default"] = self.default
        for key in ("type", "choices", "metavar"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if required:
            kwargs["required"] = True
        action = parser.add_argument(*self.flags, **kwargs)
        action.declaration = self  # what tests/test_job_options.py reads
        return action


def one_value(values: list[str], flag: str) -> str:
    """The single value of a repeatable shared option (``--data``) in a job that takes one."""
    if len(values) > 1:
        raise SystemExit(f"{flag} takes one value in this job, got {len(values)}: {values}")
    return values[0]


def add(parser, *flags: str, required: bool = False, **settings: Any) -> argparse.Action:
    """Declare and add an option only this job has (a shared one is an :class:`Option` in this module)."""
    return Option(flags=flags, **settings).add(parser, required=required)


_G = GeneratorConfig
_SIZE_DEFAULTS = ", ".join(f"{size} for {name}" for name, (size, _) in PRESET_SAMPLING.items())
_STEPS_DEFAULTS = ", ".join(f"{steps} for {name}" for name, (_, steps) in PRESET_SAMPLING.items())

CONFIG = Option(
    ("--config",),
    "a YAML file of this job's options (option names as keys, e.g. guidance_scale: 5.0); name=value arguments "
    "(e.g. guidance_scale=5) override it, and flags override both. Jobs with an output write the resolved options "
    "there as config.yaml (default: none)",
    metavar="FILE.yaml",
)

# --- inputs and outputs
INPUT = Option(
    ("--input",),
    "folder of product cutouts (SKU id = file stem) or a manifest (.parquet/.csv/.jsonl); local or fsspec URI",
)
OUTPUT = Option(
    ("--output", "--out"),
    "where the job writes its results (a folder, except eval-generator's JSON file); local or fsspec URI. "
    "Rerunning a job with the same output resumes it",
)
LIMIT = Option(("--limit",), "use at most this many products (default: all)", type=int)
SEED = Option(("--seed",), "the run's seed: every random choice of the job derives from it", default=0, type=int)

# --- the generator (engine.config.GeneratorConfig)
BASE_MODEL = Option(
    ("--base-model",),
    "toy (trained on the synthetic world) | tiny | sd15 (random-weight presets) | diffusers folder | "
    "single-file .safetensors",
    default=_G.base_model,
)
CONTROLNET = Option(
    ("--controlnet",),
    "diffusers ControlNet folder, e.g. an RFFT output (default: the preset's own; a real base model needs one)",
)
BASE_CONFIG = Option(
    ("--base-config",), "for a single-file checkpoint: a diffusers SD 1.5 folder with its configs and tokenizer"
)
LORA = Option(("--lora",), "LoRA .safetensors file to fuse")
LORA_SCALE = Option(("--lora-scale",), "LoRA strength (0 = no effect)", default=_G.lora_scale, type=float)
SCHEDULER = Option(
    ("--scheduler",),
    f"{' | '.join(SCHEDULERS)} (also 'Euler a', 'DPM++ SDE Karras')",
    default=_G.scheduler,
)
SIZE = Option(("--size",), f"canvas side in px (default: {_SIZE_DEFAULTS}, else {_G.size})", type=int)
STEPS = Option(("--steps", "--gen-steps"), f"denoising steps (default: {_STEPS_DEFAULTS}, else {_G.steps})", type=int)
GUIDANCE_SCALE = Option(
    ("--guidance-scale", "--guidance"), "classifier-free guidance scale", default=_G.guidance_scale, type=float
)
CONDITIONING_SCALE = Option(
    ("--conditioning-scale",), "ControlNet residual scale", default=_G.conditioning_scale, type=float
)
DEVICE = Option(("--device",), "auto | cpu | cuda | cuda:N", default=_G.device)
DTYPE = Option(
    ("--dtype",),
    "precision on GPU (CPU is always fp32; training takes fp32 or bf16)",
    default=_G.dtype,
    choices=("fp32", "bf16", "fp16"),
)
GEN_BATCH_SIZE = Option(("--gen-batch-size",), "images per generator call (default: 8 on GPU, 4 on CPU)", type=int)

# --- conditioning and prompts (engine.config.ConditioningConfig, engine.prepare.PromptPolicy)
PROMPTS = Option(("--prompts",), "prompt config JSON in the authors' format (default: the bundled one)")
KEEP_LOC = Option(("--keep-loc",), "keep the product's original placement instead of centring it", action="store_true")
MIX_CAPTION = Option(("--mix-caption",), "prefix each product's caption to the prompt", action="store_true")

# --- the scorer: RFNet and its depth and saliency models
RFNET = Option(
    ("--rfnet",),
    "RFNet: tiny | paper (random-weight presets) | toy (trained on the toy generator's images) | a checkpoint "
    "folder | inspector (the rule-based judge of the synthetic world); refresh also takes 'fixed-rate:P', a "
    "benchmark-only scorer accepting a known fraction P",
    default=ScorerConfig.rfnet,
)
THRESHOLD = Option(
    ("--threshold",), "accept when P(Available) >= T (default: the checkpoint's)", type=float, metavar="T"
)
DEPTH = Option(
    ("--depth",),
    "depth model: tiny | paper (DPT-Large, random) | toy (trained) | a transformers depth folder",
    default=ScorerConfig.depth,
)
SALIENCY = Option(
    ("--saliency",),
    "saliency model: tiny | paper (U^2-Net, random) | toy (trained) | u2net.pth or u2netp.pth (U^2-Net's weights) "
    "| a saliency folder",
    default=ScorerConfig.saliency,
)

# --- training jobs (train-rfnet, train-maps, train-generator): the defaults belong to each recipe's config
DATA = Option(
    ("--data",),
    "training data: the folder or manifest the job's recipe reads; train-rfnet takes it repeated, to merge sets "
    "(e.g. a review export and RF1M)",
    action="append",
)
RUN_NAME = Option(("--name",), "Ray Train run name; the same --output and --name resume")
EPOCHS = Option(("--epochs",), "passes over the training data", type=int)
BATCH_SIZE = Option(("--batch-size",), "training examples per worker per step", type=int)
LR = Option(("--lr",), "AdamW learning rate", type=float)
CPUS_PER_WORKER = Option(
    ("--cpus-per-worker",), "CPUs reserved per Ray Train worker (also its torch thread count)", default=1, type=int
)
MAX_STEPS_PER_EPOCH = Option(
    ("--max-steps-per-epoch",), "cap on optimizer steps per epoch (default: no cap)", type=int
)
IMAGE_SIZE = Option(("--image-size",), "the model's input side in px", type=int)

REFRESH_OUTPUT = Option(("output",), "a refresh's output root (local path or fsspec URI)", metavar="OUT")
"""The positional of the jobs that read one refresh output (report, review)."""

# --- HTTP servers (serve, review)
HOST = Option(("--host",), "address to bind (127.0.0.1: this machine only)", default="127.0.0.1")
PORT = Option(("--port",), "HTTP port", type=int)
TOKEN_FILE = Option(("--token-file",), "file holding the bearer token every request must carry (default: no token)")

# --- where it runs
RAY_ADDRESS = Option(("--ray-address", "--address"), "Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
STRATEGY = Option(("--strategy",), "Ray Train strategy", default="ddp", choices=("ddp", "deepspeed"))
ZERO_STAGE = Option(
    ("--zero-stage",), "DeepSpeed ZeRO stage (with --strategy deepspeed; train-rfnet takes 0-2)", default=2, type=int
)
WORKERS = Option(("--workers",), "Ray Train workers", default=2, type=int)
GPU = Option(("--gpu",), "one GPU per Ray Train worker", action="store_true")


def add_generator_args(p: argparse.ArgumentParser) -> None:
    """The generator's and the conditioning's options (refresh, generate)."""
    g = p.add_argument_group("generator")
    for option in (
        BASE_MODEL,
        CONTROLNET,
        BASE_CONFIG,
        LORA,
        LORA_SCALE,
        SCHEDULER,
        SIZE,
        STEPS,
        GUIDANCE_SCALE,
        CONDITIONING_SCALE,
        DEVICE,
        DTYPE,
    ):
        option.add(g)
    c = p.add_argument_group("conditioning")
    for option in (PROMPTS, KEEP_LOC, MIX_CAPTION, SEED):
        option.add(c)


def generator_config(args: argparse.Namespace, **fields: Any) -> GeneratorConfig:
    """The ``GeneratorConfig`` of the options :func:`add_generator_args` added (``fields`` override)."""
    values = {
        "controlnet": args.controlnet,
        "base_config": getattr(args, "base_config", None),
        "lora": getattr(args, "lora", None),
        "lora_scale": getattr(args, "lora_scale", _G.lora_scale),
        "scheduler": getattr(args, "scheduler", _G.scheduler),
        "guidance_scale": args.guidance_scale,
        "conditioning_scale": getattr(args, "conditioning_scale", _G.conditioning_scale),
        "device": getattr(args, "device", _G.device),
        "dtype": getattr(args, "dtype", _G.dtype),
        **fields,
    }
    return GeneratorConfig.for_model(args.base_model, size=args.size, steps=args.steps, **values)


def conditioning_config(args: argparse.Namespace, size: int) -> ConditioningConfig:
    return ConditioningConfig(size=size, keep_loc=args.keep_loc)
