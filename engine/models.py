"""The model factory: the one place a generation pipeline is built.

``build_pipeline(GeneratorConfig)`` returns a diffusers ``StableDiffusionControlNetInpaintPipeline`` from

- a preset: ``tiny`` (random weights from small configs, fast on CPU: what tests and the demo use) or
  ``sd15`` (the real SD 1.5 + ControlNet-canny architecture and sizes with random weights, for GPU
  benchmarks that need the true compute cost);
- or local files: a diffusers base-model folder or a single-file ``.safetensors`` checkpoint, a
  ControlNet folder, and an optional LoRA file fused at a given scale.

Nothing here ever downloads: presets are built from configs in code with the project's own tokenizer,
and every path is checked up front (``engine/model_paths.py``, which a job's driver uses without importing
this module) so a wrong one fails with an error naming it.
"""

from __future__ import annotations

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
from cluster.paths import ModelPathError
from engine.config import GeneratorConfig
from engine.model_paths import (
    CONFIG_DIR,
    NEEDS_CONTROLNET,
    PRESETS,
    check_base,
    check_controlnet,
    own_controlnet,
    require_dir_with,
    require_file,
    resolve_base,
)
from engine.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)


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


def _load_controlnet(path: str) -> ControlNetModel:
    return ControlNetModel.from_pretrained(check_controlnet(path), local_files_only=True)


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
        lora = require_file(cfg.lora, (".safetensors",), "LoRA file")
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lora")
        pipe.fuse_lora(lora_scale=cfg.lora_scale)
        pipe.unload_lora_weights()  # keep the fused weights, drop the adapter layers
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pipe.to(device=device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_base(cfg: GeneratorConfig, controlnet: ControlNetModel | None, common: dict):
    base = check_base(resolve_base(cfg.base_model))
    if controlnet is None and not own_controlnet(str(base)):
        raise ModelPathError(NEEDS_CONTROLNET.format(cfg.base_model))
    if base.is_dir():
        own = {} if controlnet is None else {"controlnet": controlnet}
        return StableDiffusionControlNetInpaintPipeline.from_pretrained(base, local_files_only=True, **own, **common)
    checkpoint = base
    if cfg.base_config:
        config_dir = require_dir_with(cfg.base_config, "model_index.json", CONFIG_DIR)
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


def vae_scale_factor(pipe) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)
