"""RFNet, the multimodal reliability classifier: model, preprocessing, checkpoint, scorer, data, training.

Public API (the engine, the online scorer and RFFT depend on these names)::

    LABELS, RFNetConfig, RFNet          # label order, architecture config, the nn.Module
    load(path_or_preset, device)        # -> (RFNet in eval mode, Preprocess)
    save(model, folder, threshold)      # config.json + model.safetensors + tokenizer/
    Scorer, ScoreResult                 # numpy in, P(Available) / per-class probabilities / verdict out
    Preprocess                          # differentiable tensor preprocessing shared by all consumers
    load_depth, load_saliency           # the auxiliary-modality models (tiny/paper/toy presets or local folders)

Training lives in ``rfnet.train`` and ``rfnet.maps_train`` (the depth and saliency models; both import ray)
and is not imported here.
"""

from rfnet.checkpoint import build, load, save
from rfnet.config import LABELS, MODALITIES, RFNetConfig, preset
from rfnet.depth import load_depth
from rfnet.model import RFNet
from rfnet.preprocess import Preprocess
from rfnet.saliency import load_saliency
from rfnet.scorer import Scorer, ScoreResult

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
