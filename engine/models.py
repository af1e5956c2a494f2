"""The model factory: the one place a generation pipeline is built.

``build_pipeline(GeneratorConfig)`` returns a diffusers ``StableDiffusionControlNetInpaintPipeline`` from

- a preset: ``tiny`` (random weights from small configs, fast on CPU: what tests and the demo use) or
  ``sd15`` (the real SD 1.5 + ControlNet-canny architecture and sizes with random weights, for GPU
  benchmarks that need the true compute cost);
- or local files: a diffusers base-model folder or a single-file ``.safetensors`` checkpoint, a
  ControlNet folder, and an optional LoRA file fused at a given scale.

Nothing here ever downloads: presets are built from configs in code with the project's own tokenizer,
and every path is checked up front so a wrong one fails with an error naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionControlNetInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from cluster.devices import resolve_device, resolve_dtype
from cluster.paths import ModelPathError, checked_path
from engine.config import GeneratorConfig
from engine.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

PRESETS = ("tiny", "sd15")
"""Random-weight presets, built from configs in code."""
TOY_GENERATOR = Path(__file__).parent / "assets" / "toy" / "generator"
"""The ``toy`` preset: the shipped pipeline folder ``adloop train-generator`` trained on the synthetic world."""
FOLDER_PRESETS = {"toy": TOY_GENERATOR}
"""Presets that are shipped folders; they load exactly like a user's diffusers folder."""

# SD 1.5's noise schedule; every scheduler below starts from it.
_SD15_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# --- preset architectures ------------------------------------------------------------------------

_TINY = {
    "unet": {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    },
    "controlnet_extra": {"conditioning_embedding_out_channels": (16, 32, 32)},
    "vae": {
        "block_out_channels": (16, 32, 32),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 128,
    },
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 77,
        "projection_dim": 32,
    },
}

_SD15 = {
    "unet": {
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    "controlnet_extra": {"conditioning_embedding_out_channels": (16, 32, 96, 256)},
    "vae": {
        "block_out_channels": (128, 256, 512, 512),
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    "text": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "projection_dim": 768,
        "hidden_act": "quick_gelu",
    },
}


def _preset_components(name: str) -> dict:
    """Random-weight components of a preset. Seeded per component, so every build is identical."""
    arch = {"tiny": _TINY, "sd15": _SD15}[name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch["unet"])
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(unet, **arch["controlnet_extra"])
    torch.manual_seed(0)
    vae = AutoencoderKL(**arch["vae"])
    tokenizer = build_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**arch["text"], **special))
    return {"unet": unet, "controlnet": controlnet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}


# --- checking local paths --------------------------------------------------------------------------


def _require_dir_with(path: str, filename: str, what: str) -> Path:
    return Path(checked_path(path, what, inside=filename))


def _require_file(path: str, suffixes: tuple[str, ...], what: str) -> Path:
    return Path(checked_path(path, what, suffixes=suffixes))


def _check_controlnet(path: str) -> Path:
    folder = _require_dir_with(path, "config.json", "ControlNet folder")
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") != "ControlNetModel":
        raise ModelPathError(
            f"{folder} is not a ControlNet folder: config.json has _class_name {config.get('_class_name')!r}"
        )
    return folder


def _check_base(path: str) -> Path:
    """A complete diffusers folder, or a single-file ``.safetensors`` checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir() or not p.suffix:
        folder = _require_dir_with(path, "model_index.json", "diffusers base-model folder")
        _check_components(folder)
        return folder
    return _require_file(path, (".safetensors",), "single-file SD 1.5 checkpoint")


def _check_components(folder: Path) -> None:
    """Every component ``model_index.json`` lists must have its folder with a config inside."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelPathError(f"{folder}/model_index.json is not valid JSON ({err})") from None
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = folder / name
        if not sub.is_dir() or not any(sub.glob("*.json")):
            raise ModelPathError(
                f"{folder} is not a complete diffusers pipeline: component {name!r} ({entry[-1]}) is listed in "
                f"model_index.json but {sub} has no config"
            )


def _own_controlnet(base: str) -> bool:
    """Whether a base-model folder carries its own ControlNet (a saved ControlNet pipeline, like ``toy``)."""
    index = Path(base).expanduser() / "model_index.json"
    return index.is_file() and isinstance(json.loads(index.read_text()).get("controlnet"), list)


def resolve_base(name: str) -> str:
    """A folder preset's path, or ``name`` unchanged."""
    return str(FOLDER_PRESETS[name]) if name in FOLDER_PRESETS else name


def checked_paths(cfg: GeneratorConfig) -> GeneratorConfig:
    """``cfg`` with every local path checked (without loading any weights) and made absolute.

    Jobs call this where they start: a wrong path then fails at once, named, instead of in every actor
    that tries to load it; and an absolute path names the same files in workers whose working directory
    is not the job's (Ray Train's is not).

    Raises:
        ModelPathError: as ``build_pipeline`` would.
    """
    changes: dict[str, str] = {}
    if cfg.controlnet:
        changes["controlnet"] = str(_check_controlnet(cfg.controlnet))
    if cfg.base_model not in PRESETS:
        base = _check_base(resolve_base(cfg.base_model))
        if not cfg.controlnet and not _own_controlnet(str(base)):
            raise ModelPathError(_NEEDS_CONTROLNET.format(cfg.base_model))
        if cfg.base_model not in FOLDER_PRESETS:  # a preset keeps its name (the model id in manifests)
            changes["base_model"] = str(base)
    if cfg.base_config:
        changes["base_config"] = str(_require_dir_with(cfg.base_config, "model_index.json", _CONFIG_DIR))
    if cfg.lora:
        changes["lora"] = str(_require_file(cfg.lora, (".safetensors",), "LoRA file"))
    return dataclasses.replace(cfg, **changes)


_NEEDS_CONTROLNET = (
    "base model {} needs a ControlNet folder (--controlnet): it has no controlnet/ of its own, as presets and "
    "saved ControlNet pipelines do"
)
_CONFIG_DIR = "diffusers SD 1.5 config folder"


def _load_controlnet(path: str) -> ControlNetModel:
    return ControlNetModel.from_pretrained(_check_controlnet(path), local_files_only=True)


def _write_sd15_config_folder(root: Path) -> Path:
    """A diffusers SD 1.5 folder with configs and tokenizer only, for ``from_single_file(config=...)``."""
    arch = _SD15
    for sub, cls, cfg in (
        ("unet", UNet2DConditionModel, arch["unet"]),
        ("vae", AutoencoderKL, arch["vae"]),
    ):
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps({"_class_name": cls.__name__, **_jsonable(cfg)}))
    (root / "text_encoder").mkdir()
    CLIPTextConfig(**arch["text"]).save_pretrained(root / "text_encoder")
    build_tokenizer().save_pretrained(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", **_SD15_SCHEDULE, "clip_sample": False, "set_alpha_to_one": False})
    )
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
            }
        )
    )
    return root


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


# --- the factory -------------------------------------------------------------------------------------


def make_scheduler(name: str, base_config: dict | None = None):
    """Build a scheduler by name from SD 1.5's schedule (or a loaded pipeline's scheduler config)."""
    base = dict(base_config or _SD15_SCHEDULE)
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    if name == "ddim":
        return DDIMScheduler.from_config({**base, "clip_sample": False, "set_alpha_to_one": False})
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(base)
    if name == "dpmpp_sde_karras":
        return DPMSolverSDEScheduler.from_config({**base, "use_karras_sigmas": True})
    raise ValueError(f"unknown scheduler {name!r}")


def build_pipeline(cfg: GeneratorConfig) -> StableDiffusionControlNetInpaintPipeline:
    """Build the generation pipeline ``cfg`` describes, on its device and in its dtype.

    Raises:
        ModelPathError: a path is missing or is not the kind of model expected there.
    """
    common = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    controlnet = _load_controlnet(cfg.controlnet) if cfg.controlnet else None
    if cfg.base_model in PRESETS:
        components = _preset_components(cfg.base_model)
        if controlnet is not None:
            components["controlnet"] = controlnet
        pipe = StableDiffusionControlNetInpaintPipeline(**components, scheduler=make_scheduler("ddim"), **common)
    else:
        pipe = _load_base(cfg, controlnet, common)
    pipe.scheduler = make_scheduler(cfg.scheduler, dict(pipe.scheduler.config))
    if cfg.lora:
        lora = _require_file(cfg.lora, (".safetensors",), "LoRA file")
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lora")
        pipe.fuse_lora(lora_scale=cfg.lora_scale)
        pipe.unload_lora_weights()  # keep the fused weights, drop the adapter layers
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pipe.to(device=device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_base(cfg: GeneratorConfig, controlnet: ControlNetModel | None, common: dict):
    base = _check_base(resolve_base(cfg.base_model))
    if controlnet is None and not _own_controlnet(str(base)):
        raise ModelPathError(_NEEDS_CONTROLNET.format(cfg.base_model))
    if base.is_dir():
        own = {} if controlnet is None else {"controlnet": controlnet}
        return StableDiffusionControlNetInpaintPipeline.from_pretrained(base, local_files_only=True, **own, **common)
    checkpoint = base
    if cfg.base_config:
        config_dir = _require_dir_with(cfg.base_config, "model_index.json", _CONFIG_DIR)
        return _from_single_file(checkpoint, config_dir, controlnet, common)
    logger.warning(
        "no --base-config given: %s gets the project's offline tokenizer, not CLIP's vocabulary", checkpoint
    )
    with tempfile.TemporaryDirectory() as tmp:
        return _from_single_file(checkpoint, _write_sd15_config_folder(Path(tmp)), controlnet, common)


def _from_single_file(checkpoint: Path, config_dir: Path, controlnet, common: dict):
    try:
        return StableDiffusionControlNetInpaintPipeline.from_single_file(
            str(checkpoint), config=str(config_dir), controlnet=controlnet, local_files_only=True, **common
        )
    except Exception as err:  # diffusers raises many types here (SingleFileComponentError, KeyError, ...)
        raise ModelPathError(f"{checkpoint} could not be read as an SD 1.5 single-file checkpoint: {err}") from err


def model_id(path_or_preset: str | None) -> str:
    """A short, stable identifier of a model for output manifests: the preset name, or the path's
    name plus a hash of its config files and weight-file sizes (cheap, and changes when they do)."""
    if path_or_preset is None:
        return "preset"
    if path_or_preset in PRESETS or path_or_preset in FOLDER_PRESETS:
        return path_or_preset
    p = Path(path_or_preset).expanduser()
    digest = hashlib.sha1(str(p.resolve()).encode())
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    for f in files:
        if f.is_file():
            digest.update(f.name.encode())
            digest.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                digest.update(f.read_bytes())
    return f"{p.name}@{digest.hexdigest()[:8]}"


def vae_scale_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def describe(cfg: GeneratorConfig) -> dict[str, str]:
    """Model identifiers recorded next to every generated image."""
    return {
        "base_model": model_id(cfg.base_model),
        "controlnet": model_id(cfg.controlnet) if cfg.controlnet else f"{model_id(cfg.base_model)}-controlnet",
        "lora": f"{model_id(cfg.lora)}x{cfg.lora_scale:g}" if cfg.lora else "",
    }
