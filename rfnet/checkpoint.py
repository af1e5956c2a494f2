"""RFNet checkpoint folders: what training writes and every consumer (engine, Serve, RFFT) loads.

Layout of a folder written by ``save``::

    config.json          {"rfnet": RFNetConfig fields, "labels": [...], "threshold": 0.5, "format": 1}
    model.safetensors    every parameter and buffer of RFNet (fp32)
    tokenizer/           the caption tokenizer (transformers ``save_pretrained``)

The encoder configs are written out in full (``image_encoder_path``/``text_encoder_path`` are cleared), so
a checkpoint is self-contained: loading it never needs the folders the training run started from.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import load_file, save_file

from cluster.storage import write_bytes_atomic
from rfnet.checkpoint_files import CONFIG_NAME, FORMAT_VERSION, TOKENIZER_DIR, WEIGHTS_NAME, read_meta
from rfnet.config import LABELS, PRESET_NAMES, TRAINED_RFNETS, RFNetConfig, preset
from rfnet.model import RFNet
from rfnet.preprocess import Preprocess, resolve_inputs
from rfnet.text import load_tokenizer
from rfnet.weights import PretrainedWeightsError, load_checked


def build(cfg: RFNetConfig, seed: int = 0) -> tuple[RFNet, Preprocess]:
    """A freshly initialised RFNet for ``cfg`` (deterministic for a given seed) and its preprocessing, with the
    input size and normalisation resolved (``rfnet.preprocess.resolve_inputs``: the image encoder folder's own
    where the config leaves them open); ``model.cfg`` is the resolved config a checkpoint stores.

    Raises:
        PretrainedWeightsError: an encoder folder is not a supported architecture or its weights do not fit.
        ValueError: the encoder folder's preprocessing cannot be followed.
    """
    cfg = resolve_inputs(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RFNet(cfg)
    return model, Preprocess(cfg, load_tokenizer(cfg.tokenizer))


def _self_contained(model: RFNet) -> RFNetConfig:
    cfg = model.cfg
    changes = {}
    if cfg.image_encoder_path:
        trunk = model.image_encoder if cfg.shared_image_encoder else next(iter(model.image_encoders.values()))
        changes |= {"image_encoder": _encoder_kwargs(trunk.config.to_diff_dict()), "image_encoder_path": None}
    text = getattr(model, "text_encoder", None)
    if text is not None:
        kwargs = _encoder_kwargs(text.config.to_diff_dict())
        # Defaults are left out of a diff dict; these two must never fall back to the tokenizer's guess, and
        # the architecture (a BERT is not a RoBERTa: their position ids differ) is kept.
        kwargs |= {"vocab_size": text.config.vocab_size, "pad_token_id": text.config.pad_token_id,
                   "model_type": text.config.model_type}  # fmt: skip
        changes |= {"text_encoder": kwargs, "text_encoder_path": None}
    return cfg.replace(**changes, tokenizer=TOKENIZER_DIR)


def _encoder_kwargs(d: dict) -> dict:
    drop = {"architectures", "transformers_version", "model_type", "_name_or_path", "dtype", "torch_dtype"}
    return {k: v for k, v in d.items() if k not in drop}


def save(model: RFNet, folder: str, threshold: float = 0.5, tokenizer=None) -> None:
    """Write ``model`` as a checkpoint folder.

    Args:
        model: the RFNet to save (unwrapped, i.e. not the DDP/DeepSpeed wrapper).
        folder: destination folder (created; existing files are overwritten).
        threshold: the decision threshold on P(Available) that ``Scorer`` applies by default.
        tokenizer: the caption tokenizer; defaults to the one named by ``model.cfg.tokenizer``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    os.makedirs(folder, exist_ok=True)
    cfg = _self_contained(model)
    meta = {"format": FORMAT_VERSION, "rfnet": cfg.to_dict(), "labels": list(LABELS), "threshold": float(threshold)}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, WEIGHTS_NAME))
    (tokenizer or load_tokenizer(model.cfg.tokenizer)).save_pretrained(os.path.join(folder, TOKENIZER_DIR))
    # config.json last: a folder with a config.json is a complete checkpoint.
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(meta, f, indent=2)


def set_threshold(folder: str, threshold: float) -> None:
    """Store a new default decision threshold in a checkpoint folder (e.g. one calibrated for precision on
    a labelled set of the images it will score); weights and config are left as they are."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    meta = read_meta(folder)
    meta["threshold"] = float(threshold)
    write_bytes_atomic(os.path.join(folder, CONFIG_NAME), json.dumps(meta, indent=2).encode())


def resolve(path_or_preset: str) -> str:
    """The folder of a shipped trained checkpoint (``TRAINED_RFNETS``, e.g. ``toy``); anything else as it is."""
    return TRAINED_RFNETS.get(path_or_preset, path_or_preset)


def load(path_or_preset: str, device: str | torch.device = "cpu") -> tuple[RFNet, Preprocess]:
    """Load an RFNet (in eval mode) and the preprocessing that goes with it.

    Args:
        path_or_preset: ``"tiny"`` / ``"paper"`` (random weights, seed 0), ``"toy"`` (shipped, trained) or a
            checkpoint folder from ``save``.
        device: where to put the model.

    Raises:
        FileNotFoundError: not a preset and not a checkpoint folder.
    """
    if path_or_preset in PRESET_NAMES:
        model, prep = build(preset(path_or_preset))
        return model.to(device).eval(), prep
    path_or_preset = resolve(path_or_preset)
    cfg = config_of(path_or_preset)
    model = RFNet(cfg)
    load_weights(model, path_or_preset)
    return model.to(device).eval(), Preprocess(cfg, load_tokenizer(cfg.tokenizer))


def config_of(folder: str) -> RFNetConfig:
    """The resolved ``RFNetConfig`` of a checkpoint folder, its own tokenizer named.

    Raises:
        FileNotFoundError: not a checkpoint folder.
        PretrainedWeightsError: ``config.json`` is not an RFNet config this code reads (named, with why).
    """
    meta = read_meta(folder)
    try:
        cfg = RFNetConfig.from_dict(meta["rfnet"])
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedWeightsError(
            f"{os.path.join(folder, CONFIG_NAME)}: not an RFNet checkpoint config: {e}"
        ) from None
    tok_dir = os.path.join(folder, TOKENIZER_DIR)
    # Checkpoints from before the normalisation was a config field were trained with ImageNet statistics.
    return resolve_inputs(cfg.replace(tokenizer=tok_dir if os.path.isdir(tok_dir) else "tiny"))


def load_weights(model: RFNet, folder: str) -> None:
    """Fill ``model`` with the weights of checkpoint ``folder``, every key and shape checked.

    Raises:
        PretrainedWeightsError: the weights do not fit ``model`` (the file named, with the keys).
    """
    path = os.path.join(folder, WEIGHTS_NAME)
    load_checked(model, load_file(path), path, "the RFNet of its config.json")


def threshold_of(path_or_preset: str) -> float:
    """The decision threshold stored in a checkpoint (0.5 for presets)."""
    if path_or_preset in PRESET_NAMES:
        return 0.5
    return float(read_meta(resolve(path_or_preset))["threshold"])


def model_id(path_or_preset: str) -> str:
    """A short identifier: the preset name, or ``<folder name>-<first 10 hex of the weights' sha256>``."""
    if path_or_preset in PRESET_NAMES:
        return path_or_preset
    h = hashlib.sha256()
    with open(os.path.join(resolve(path_or_preset), WEIGHTS_NAME), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    name = path_or_preset if path_or_preset in TRAINED_RFNETS else os.path.basename(os.path.normpath(path_or_preset))
    return f"{name}-{h.hexdigest()[:10]}"
