"""Model names and paths, checked without loading anything: what a job's driver needs.

The driver checks every path where a job starts and records model identifiers next to every image,
but never builds a pipeline; keeping this apart from ``engine/models.py`` keeps torch and diffusers
(seconds of imports on 2 cores) out of the driver and of every process that only checks paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from cluster.paths import ModelPathError, checked_path
from engine.config import GeneratorConfig

PRESETS = ("tiny", "sd15")
"""Random-weight presets, built from configs in code."""
TOY_GENERATOR = Path(__file__).parent / "assets" / "toy" / "generator"
"""The ``toy`` preset: the shipped pipeline folder ``adloop train-generator`` trained on the synthetic world."""
FOLDER_PRESETS = {"toy": TOY_GENERATOR}
"""Presets that are shipped folders; they load exactly like a user's diffusers folder."""


def require_dir_with(path: str, filename: str, what: str) -> Path:
    return Path(checked_path(path, what, inside=filename))


def require_file(path: str, suffixes: tuple[str, ...], what: str) -> Path:
    return Path(checked_path(path, what, suffixes=suffixes))


def check_controlnet(path: str) -> Path:
    folder = require_dir_with(path, "config.json", "ControlNet folder")
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name") != "ControlNetModel":
        raise ModelPathError(
            f"{folder} is not a ControlNet folder: config.json has _class_name {config.get('_class_name')!r}"
        )
    return folder


def check_base(path: str) -> Path:
    """A complete diffusers folder, or a single-file ``.safetensors`` checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir() or not p.suffix:
        folder = require_dir_with(path, "model_index.json", "diffusers base-model folder")
        _check_components(folder)
        return folder
    return require_file(path, (".safetensors",), "single-file SD 1.5 checkpoint")


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


def own_controlnet(base: str) -> bool:
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
        changes["controlnet"] = str(check_controlnet(cfg.controlnet))
    if cfg.base_model not in PRESETS:
        base = check_base(resolve_base(cfg.base_model))
        if not cfg.controlnet and not own_controlnet(str(base)):
            raise ModelPathError(NEEDS_CONTROLNET.format(cfg.base_model))
        if cfg.base_model not in FOLDER_PRESETS:  # a preset keeps its name (the model id in manifests)
            changes["base_model"] = str(base)
    if cfg.base_config:
        changes["base_config"] = str(require_dir_with(cfg.base_config, "model_index.json", CONFIG_DIR))
    if cfg.lora:
        changes["lora"] = str(require_file(cfg.lora, (".safetensors",), "LoRA file"))
    return dataclasses.replace(cfg, **changes)


NEEDS_CONTROLNET = (
    "base model {} needs a ControlNet folder (--controlnet): it has no controlnet/ of its own, as presets and "
    "saved ControlNet pipelines do"
)
CONFIG_DIR = "diffusers SD 1.5 config folder"


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


def describe(cfg: GeneratorConfig) -> dict[str, str]:
    """Model identifiers recorded next to every generated image."""
    return {
        "base_model": model_id(cfg.base_model),
        "controlnet": model_id(cfg.controlnet) if cfg.controlnet else f"{model_id(cfg.base_model)}-controlnet",
        "lora": f"{model_id(cfg.lora)}x{cfg.lora_scale:g}" if cfg.lora else "",
    }
