"""``MapsTrainConfig``: every knob of the toy depth and saliency recipe (``rfnet.maps_train``), typed and documented.

A module of its own, importing nothing heavy, so ``adloop train-maps --help`` shows the recipe's defaults from this
one declaration at once. The model sizes live beside the models (``rfnet.depth``, ``rfnet.saliency``, which import
torch), so they are read only when a config is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rfnet.saliency import SaliencyConfig

MODELS = ("depth", "saliency")
ARCHS = ("toy", "tiny")
"""Model sizes by name: ``toy`` (what ships, the default) or ``tiny`` (the random presets' sizes, for tests)."""


def depth_arch(name: str) -> dict[str, Any]:
    """``DPTConfig`` kwargs by name: ``"toy"`` (what ships) or ``"tiny"`` (the random preset's sizes, for tests)."""
    from rfnet.depth import TOY_DPT, tiny_dpt_config

    if name == "toy":
        return dict(TOY_DPT)
    if name == "tiny":
        tiny = tiny_dpt_config()
        return {k: getattr(tiny, k) for k in TOY_DPT}
    raise ValueError(f"unknown depth architecture {name!r}; expected 'toy' or 'tiny'")


def saliency_arch(name: str) -> SaliencyConfig:
    """``SaliencyConfig`` by name: ``"toy"`` (what ships) or ``"tiny"`` (the random preset's sizes, min-max off)."""
    from rfnet.saliency import TOY, SaliencyConfig

    if name == "toy":
        return dataclasses.replace(TOY)
    if name == "tiny":
        return SaliencyConfig(minmax=False)
    raise ValueError(f"unknown saliency architecture {name!r}; expected 'toy' or 'tiny'")


@dataclass
class MapsTrainConfig:
    """Everything one training run of the map models needs; ``fit_maps`` writes it next to the outputs."""

    data: str
    """RF1M-layout folder (or manifest) whose examples all have ``depth`` and ``saliency`` maps, e.g. what
    ``adloop synth rf1m --render-size 128`` writes."""
    output: str
    """Output folder: ``depth/``, ``saliency/``, ``metrics.json``, ``train_config.json``, ``ray/``."""
    models: tuple[str, ...] = MODELS
    """Which models to train (``depth``, ``saliency`` or both, on the same batches)."""
    depth_model: dict[str, Any] = field(default_factory=lambda: depth_arch(ARCHS[0]))
    """``DPTConfig`` kwargs of the depth model; its input side is ``image_size`` of these kwargs."""
    saliency_model: SaliencyConfig = field(default_factory=lambda: saliency_arch(ARCHS[0]))
    """Sizes of the saliency model (``minmax`` is saved with it: False for maps on a fixed scale)."""
    depth_minmax: bool = False
    """Saved in the depth folder: min-max normalise predictions at inference (False: clamp to [0, 1])."""
    image_size: int = 128
    """Side in px that images and target maps are decoded at (the engine's canvas); each model resizes
    images to its own input side internally."""
    max_examples: int | None = None
    """Use only the first N examples of ``data`` (``None``: all)."""
    eval_seed: int = 2
    """Synth seed of the held-out renders; must not be the seed the training set was written with."""
    eval_images: int = 400
    """Held-out renders evaluated after every epoch (0 skips evaluation)."""
    saliency_truth_threshold: float = 0.5
    """The renderer's saliency is binarised at this level for the F-measure."""
    name: str = "maps"
    """Ray Train run name."""
    num_workers: int = 2
    """Ray Train workers (DDP, one process each)."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker (also its torch thread count)."""
    use_gpu: bool = False
    """One GPU per worker (nccl) instead of CPU (gloo)."""
    epochs: int = 4
    """Passes over the training set."""
    batch_size: int = 16
    """Samples per step *per worker*."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up over ``warmup_steps``, then cosine decay to 5% of it)."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warm-up."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max gradient norm per model (0 disables)."""
    seed: int = 0
    """Seed of initialisation and shuffling."""
    max_steps_per_epoch: int | None = None
    """Cap on steps per epoch (smoke tests); ``None`` = the whole shard."""

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        if isinstance(self.saliency_model, dict):
            from rfnet.saliency import SaliencyConfig

            self.saliency_model = SaliencyConfig(**self.saliency_model)
        if not self.models or set(self.models) - set(MODELS):
            raise ValueError(f"models must be a non-empty subset of {MODELS}, got {self.models}")
        if self.num_workers < 1 or self.batch_size < 1 or self.epochs < 1 or self.cpus_per_worker < 1:
            raise ValueError("num_workers, cpus_per_worker, batch_size and epochs must be >= 1")
        if self.image_size < 16:
            raise ValueError("image_size must be at least 16 px")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError("max_examples must be >= 1 or None")
        if self.eval_images < 0 or not 0.0 < self.saliency_truth_threshold < 1.0:
            raise ValueError("eval_images must be >= 0 and saliency_truth_threshold in (0, 1)")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("lr must be > 0 and warmup_steps >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
