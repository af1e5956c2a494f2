"""``TrainConfig``: every knob of the RFNet training recipe (``rfnet.train``), typed and documented.

A module of its own, importing nothing heavy, so ``adloop train-rfnet --help`` shows the recipe's defaults
from this one declaration at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cluster.configs import from_dict
from rfnet.config import DEFAULT_PRESET, RFNetConfig, preset

STRATEGIES = ("ddp", "deepspeed")
MAPS = ("dataset", "compute")


@dataclass
class TrainConfig:
    """Everything one RFNet training run needs; ``fit`` writes it resolved next to the outputs."""

    data: str | list[str]
    """RF1M-layout folder or ``.parquet``/``.jsonl`` manifest (see ``rfnet.data``), or a list of them, merged."""
    output: str
    """Output folder: ``ray/`` (Ray Train run and checkpoints), ``rfnet/`` (final model), ``metrics.json``."""
    model: RFNetConfig = field(default_factory=lambda: preset(DEFAULT_PRESET))
    """Architecture; ``model.modalities`` selects the inputs (Table 2 ablations)."""
    name: str = "rfnet"
    """Ray Train run name; the same ``output`` + ``name`` resumes from the last checkpoint."""
    strategy: str = "ddp"
    """``"ddp"`` (torch DistributedDataParallel) or ``"deepspeed"``."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0, 1 or 2); ignored with ``ddp``."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys, merged over the one built from this config."""
    num_workers: int = 2
    """Ray Train workers (one process each)."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker (also its torch thread count)."""
    data_cpus: float = 1.0
    """CPUs for Ray Data's decode tasks beside the workers' (each task takes up to one). A local Ray is started
    with ``num_workers * cpus_per_worker + data_cpus`` CPUs (rounded up: 3 for the defaults, on any machine:
    decoding then overlaps training); a joined cluster must have that many, or ``fit`` fails at once."""
    use_gpu: bool = False
    """One GPU per worker (nccl) instead of CPU (gloo)."""
    dtype: str = "fp32"
    """Compute precision, ``fp32`` | ``bf16`` (autocast; DeepSpeed's bf16 mode). Weights stay fp32."""
    epochs: int = 24
    """Passes over the training split. 24 with ``lr`` 1e-3 is the schedule measured to reach held-out AP 0.966
    on a fresh 8,000-image synthetic set in 13 minutes on 2 CPU cores (docs/benchmarks.md; 36 reached 0.980
    but took 17); the paper's is 10 at 1e-4, too short for the tiny preset to learn Size Mismatch."""
    batch_size: int = 32
    """Samples per step *per worker*; the global batch is ``batch_size * num_workers``."""
    lr: float = 1e-3
    """Initial learning rate (paper: 1e-4, for its pretrained encoders)."""
    lr_drop_epoch: int | None = None
    """Epoch (0-based) from which the lr is divided by 10; ``None`` = ``epochs // 2`` (paper: 5 of 10)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    hflip: bool = False
    """Mirror each training example left-right with probability 0.5, all its images together (product,
    generated image, depth, saliency; the caption is unchanged). No defect of the paper's or the synthetic
    world's depends on left and right, so this doubles the examples a small set offers."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""
    val_fraction: float = 0.1
    """Share of *products* in the validation split (model selection, threshold)."""
    test_fraction: float = 0.2
    """Share of *products* in the held-out test split (``metrics.json``)."""
    split_seed: int = 0
    """Seed of the product-level split."""
    seed: int = 0
    """Seed of initialisation and shuffling."""
    target_precision: float | None = 0.9
    """The saved threshold is the lowest with this val precision on Available; ``None`` keeps 0.5."""
    maps: str = "dataset"
    """``"dataset"`` uses the depth/saliency maps stored with the data; ``"compute"`` recomputes them."""
    depth: str = DEFAULT_PRESET
    """Depth model for ``maps="compute"`` (and the one the scorer should use with this checkpoint): a name
    from ``MAP_PRESET_NAMES`` (``toy`` is trained) or a folder."""
    saliency: str = DEFAULT_PRESET
    """Saliency model for ``maps="compute"``: a name from ``MAP_PRESET_NAMES`` or a folder."""
    max_steps_per_epoch: int | None = None
    """Cap on steps per epoch (smoke tests, throughput runs); ``None`` = the whole split."""
    max_failures: int = 0
    """Worker failures Ray Train recovers from (restarting from the last checkpoint)."""
    num_to_keep: int = 2
    """Checkpoints kept in storage."""
    init_from: str | None = None
    """An RFNet checkpoint folder to fine-tune: its architecture replaces ``model`` and its weights the random
    initialisation. The threshold is calibrated again on this run's validation split, as for a fresh model."""

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = from_dict(RFNetConfig, self.model)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.zero_stage not in (0, 1, 2):
            # ZeRO-3 shards the parameters themselves; the rank-strided evaluation below needs full weights
            # on every rank.
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError("dtype must be fp32 or bf16 (fp16 needs loss scaling this recipe does not do)")
        if self.maps not in MAPS:
            raise ValueError(f"maps must be one of {MAPS}, got {self.maps!r}")
        if self.data_cpus <= 0:
            raise ValueError(f"data_cpus must be > 0 (the decode tasks need a CPU), got {self.data_cpus}")
        if self.num_workers < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("num_workers, batch_size and epochs must be >= 1")
        if self.lr_drop_epoch is None:
            self.lr_drop_epoch = self.epochs // 2 if self.epochs > 1 else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config from plain data, ``model`` included (``cluster.configs.from_dict``: unknown keys are
        refused at every level)."""
        return from_dict(cls, d)
