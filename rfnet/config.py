"""``RFNetConfig``: the architecture of the reliability classifier, and its ``tiny`` / ``paper`` presets.

The config is everything needed to rebuild the network with random weights; a checkpoint folder stores it
as ``config.json`` next to the weights. Encoder sub-configs are plain dicts of transformers config kwargs
(``ResNetConfig`` for the image trunk, ``RobertaConfig`` for the caption encoder), so a user can point
``image_encoder_path`` / ``text_encoder_path`` at a local transformers folder to start from real weights.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from cluster.configs import from_dict

LABELS: tuple[str, ...] = (
    "Available",
    "Unsuitable",
    "Space Mismatch",
    "Size Mismatch",
    "Indistinctiveness",
    "Shape Hallucination",
)
"""The six labels of the RF1M README, in head order. Index 0 (Available) is the positive class."""

MODALITIES: tuple[str, ...] = ("product", "generated", "depth", "saliency", "caption")
"""The five inputs: I_o (product cutout), I_g (generated ad), I_d (depth of I_g), I_s (its saliency), Cap."""

IMAGE_MODALITIES: tuple[str, ...] = ("product", "generated", "depth", "saliency")


def _tiny_resnet() -> dict[str, Any]:
    # Three stages give an overall stride of 16, so a 64 px image becomes 4 x 4 = 16 tokens and the fusion
    # sees 1 + 4 x 16 tokens. With stride 8 (64 tokens per image) CPU attention took 60% of a training step
    # and the whole step was 2.7x slower, for no gain: the convolutions already summarise local detail.
    return {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1], "layer_type": "basic"}


def _tiny_roberta() -> dict[str, Any]:
    return {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


@dataclass
class RFNetConfig:
    """Architecture of RFNet (docs/paper.md §3.2; open choices follow §8, Q3)."""

    image_size: int | None = 64
    """Side in pixels of the square every image modality is resized to (paper: 384). ``None``: the image
    encoder folder's own input size (``preprocessor_config.json``); ``image_encoder_path`` must then have one."""
    image_mean: tuple[float, float, float] | None = None
    """Per-channel mean the images are normalised with. ``None``: the image encoder folder's
    ``preprocessor_config.json`` ``image_mean`` when it has one, else ImageNet's (what the built ResNet
    trunks are initialised for). A checkpoint stores the value it was trained with."""
    image_std: tuple[float, float, float] | None = None
    """Per-channel standard deviation, chosen like ``image_mean``."""
    width: int = 64
    """Token width of the Feature Filter Module and the fusion layers (paper: 384)."""
    heads: int = 4
    """Attention heads in the FFM cross-attention and in each fusion layer (paper: 8)."""
    ffm_layers: int = 1
    """N1: Feature Filter blocks (product tokens query the caption; paper: 1)."""
    fusion_layers: int = 2
    """N2: self-attention layers over the concatenated tokens of all modalities (paper: 3)."""
    dropout: float = 0.0
    """Dropout inside the FFM and fusion layers (training only)."""
    image_encoder: dict[str, Any] = field(default_factory=_tiny_resnet)
    """``transformers.ResNetConfig`` kwargs of the image trunk (ignored when ``image_encoder_path`` is set)."""
    image_encoder_path: str | None = None
    """Local folder of a transformers ResNet (e.g. a downloaded ``microsoft/resnet-50``) to start from."""
    shared_image_encoder: bool = True
    """One trunk for all four images, told apart by a learned modality embedding; False gives one trunk each."""
    text_encoder: dict[str, Any] = field(default_factory=_tiny_roberta)
    """``transformers.RobertaConfig`` kwargs of the caption encoder (``vocab_size`` comes from the tokenizer)."""
    text_encoder_path: str | None = None
    """Local folder of a transformers BERT, RoBERTa or XLM-R to start from, loaded as the architecture its
    ``config.json`` names (paper: a RoBERTa, fine-tuned; JD's "Chinese RoBERTa" models are BERTs)."""
    tokenizer: str = "tiny"
    """``"tiny"`` (a word-level tokenizer built in code, no files) or a local tokenizer folder."""
    max_caption_tokens: int = 32
    """Captions are truncated/padded to this many tokens, special tokens included."""
    caption_in_fusion: bool = True
    """Also feed the caption tokens to the fusion layers, next to the FFM-filtered product tokens.

    The paper's formula (docs/paper.md §3.2) fuses only ``e_f``; on the synthetic set that variant never learned
    Size Mismatch (which needs the caption's size class next to the scene's scale), so the default adds them.
    """
    modalities: tuple[str, ...] = MODALITIES
    """The inputs the model uses; drop names for the paper's Table 2 ablation."""
    frozen: tuple[str, ...] = ()
    """Parameter-name prefixes that do not train (e.g. ``("text_encoder.embeddings",)``)."""
    num_labels: int = len(LABELS)
    """Size of the head; the labels themselves are ``LABELS``."""

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.frozen = tuple(self.frozen)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        if not set(self.modalities) & set(IMAGE_MODALITIES):
            raise ValueError("RFNet needs at least one image modality")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.num_labels != len(LABELS):
            raise ValueError(f"num_labels must be {len(LABELS)} (the RF1M label set)")
        if self.image_size is None and not self.image_encoder_path:
            raise ValueError("image_size None (the image encoder's own) needs an image_encoder_path")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError("image_size must be at least 16 px")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(float(v) for v in value))
                if len(getattr(self, name)) != 3:
                    raise ValueError(f"{name} must have 3 values (R, G, B), got {value}")
        if self.image_std is not None and min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}")

    @property
    def image_modalities(self) -> tuple[str, ...]:
        """The enabled image inputs, in ``MODALITIES`` order."""
        return tuple(m for m in IMAGE_MODALITIES if m in self.modalities)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RFNetConfig:
        """The config from plain data (``cluster.configs.from_dict``: unknown keys are refused)."""
        return from_dict(cls, data)

    def replace(self, **changes: Any) -> RFNetConfig:
        return dataclasses.replace(self, **changes)


PRESET_NAMES = ("tiny", "paper")
"""The architecture presets of RFNet (``preset``, random weights) and (``tiny``) of its tokenizer."""

DEFAULT_PRESET = "tiny"
"""The model every config, job option and loader defaults to where no RFNet, depth or saliency model is
named: the small random-weight preset (in ``PRESET_NAMES`` and ``MAP_PRESET_NAMES``). Declared once, here."""

TOY_PRESET = "toy"
"""The models trained on the synthetic world and shipped (RFNet, depth, saliency; the generator's shipped
preset has the same name): what the toy world's jobs and functions default to."""

MAP_PRESET_NAMES = ("tiny", "paper", "toy")
"""The presets of the depth and saliency models (``rfnet.depth.load_depth``, ``rfnet.saliency.load_saliency``):
``tiny`` and ``paper`` are random weights, ``toy`` the weights trained on synthetic scenes by
``adloop train-maps`` and shipped in ``rfnet/assets/toy/``. Loaders and path checks of a depth or saliency
"preset or folder" check against these, never against ``PRESET_NAMES``."""

TOY_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "toy")
"""Folder of the shipped ``toy`` weights: ``depth/`` (a transformers folder), ``saliency/`` and ``rfnet/``."""

TRAINED_RFNETS = {"toy": os.path.join(TOY_ASSETS, "rfnet")}
"""RFNet checkpoints shipped with the package, by name: ``toy`` is trained on the toy generator's images
labelled by the inspector (docs/benchmarks.md). A loader of "preset or checkpoint folder" resolves these
names with ``rfnet.checkpoint.resolve``."""

INSPECTOR = "inspector"
"""The scorer name of ``rfnet.inspector.Inspector``, the independent rule-based judge (no weights)."""


def preset(name: str) -> RFNetConfig:
    """Return the config of a named preset.

    Args:
        name: ``"tiny"`` (random, CPU-fast, 64 px) or ``"paper"`` (ResNet-50 + RoBERTa-base sizes, 384 px).

    Raises:
        ValueError: an unknown preset name.
    """
    if name == "tiny":
        return RFNetConfig()
    if name == "paper":
        return RFNetConfig(
            image_size=384,
            width=384,
            heads=8,
            ffm_layers=1,
            fusion_layers=3,
            dropout=0.1,
            image_encoder={},  # ResNetConfig defaults are ResNet-50
            text_encoder={"max_position_embeddings": 514},  # RobertaConfig defaults are roberta-base
            max_caption_tokens=64,
        )
    raise ValueError(f"unknown RFNet preset {name!r}; expected 'tiny', 'paper' or a checkpoint folder")
