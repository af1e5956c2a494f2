"""RFNet, the multimodal reliability classifier: model, preprocessing, checkpoint, scorer, data, training.

Public API (the engine, the online scorer and RFFT depend on these names)::

    LABELS, RFNetConfig, RFNet          # label order, architecture config, the nn.Module
    load(path_or_preset, device)        # -> (RFNet in eval mode, Preprocess)
    save(model, folder, threshold)      # config.json + model.safetensors + tokenizer/
    Scorer, ScoreResult                 # numpy in, P(Available) / per-class probabilities / verdict out
    Preprocess                          # differentiable tensor preprocessing shared by all consumers
    load_depth, load_saliency           # the auxiliary-modality models (tiny/paper/toy presets or local folders)

Training lives in ``rfnet.train`` and ``rfnet.maps_train`` (the depth and saliency models; both import ray)
and is not imported here. The names that need torch are loaded on first use, so importing ``rfnet.config``
(a job's parser does) stays instant.
"""

import importlib

from rfnet.config import LABELS, MODALITIES, RFNetConfig, preset

# The rest imports torch and transformers (tens of seconds on a loaded machine). Loaded on first use, so
# that code needing only the label set (the review page, the report) starts at once.
_LAZY = {
    "build": "rfnet.checkpoint",
    "load": "rfnet.checkpoint",
    "save": "rfnet.checkpoint",
    "load_depth": "rfnet.depth",
    "RFNet": "rfnet.model",
    "Preprocess": "rfnet.preprocess",
    "load_saliency": "rfnet.saliency",
    "Scorer": "rfnet.scorer",
    "ScoreResult": "rfnet.scorer",
}


_SUBMODULES = {"checkpoint", "data", "depth", "metrics", "model", "preprocess", "saliency", "scorer", "synth", "text"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:  # ``import rfnet`` then ``rfnet.preprocess.X``, as when everything was eager
        return importlib.import_module(f"rfnet.{name}")
    raise AttributeError(f"module 'rfnet' has no attribute {name!r}")


__all__ = [
    "LABELS",
    "MODALITIES",
    "Preprocess",
    "RFNet",
    "RFNetConfig",
    "ScoreResult",
    "Scorer",
    "build",
    "load",
    "load_depth",
    "load_saliency",
    "preset",
    "save",
]
