"""``RFFTConfig``: everything one RFFT run needs, with units and scope on each field."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cluster.configs import from_dict
from engine.config import GeneratorConfig
from rfnet.config import DEFAULT_PRESET

# Declared here rather than in rfft.losses, so the job's parser can name them without importing torch.
REGULARISERS = ("cc", "kl", "none")
STRATEGIES = ("ddp", "deepspeed")
REWARDS = ("rfnet", "brightness")


@dataclass
class RFFTConfig:
    """A reward fine-tuning run of the ControlNet (docs/paper.md §5; defaults from §5.4 where known)."""

    # --- generator (what is sampled and fine-tuned) ---
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig.for_model(GeneratorConfig.base_model))
    """The pipeline, exactly as the engine builds it. ``generator.controlnet`` is the starting ControlNet
    (``None``: the preset's own); ``steps`` and ``guidance_scale`` are those of the training rollouts."""
    grad_window: int = 10
    """The graded step is drawn uniformly from the last ``grad_window`` denoising steps (paper: 10 of 40)."""

    # --- objective ---
    reward: str = "rfnet"
    """``rfnet`` (log P(Available) from ``rfnet_checkpoint``) | ``brightness`` (toy, for smoke tests)."""
    rfnet_checkpoint: str = DEFAULT_PRESET
    """RFNet checkpoint folder (or ``tiny`` preset) used as the frozen reward and the evaluation judge."""
    threshold: float | None = None
    """The judge's P(Available) threshold for the available rate (``None``: the checkpoint's)."""
    depth: str = DEFAULT_PRESET
    """Depth model for RFNet's depth input (``tiny`` | ``paper`` | a local folder)."""
    saliency: str = DEFAULT_PRESET
    """Saliency model for RFNet's saliency input."""
    regulariser: str = "cc"
    """``cc`` (Consistent Condition) | ``kl`` (distance to the reference eps) | ``none`` (plain ReFL)."""
    beta: float = 1.0
    """Weight of the regulariser (the paper does not give its value)."""
    feedback_scale: float = 1.0
    """Weight of the feedback loss ``-mean log P(Available)``."""

    # --- optimisation (per worker unless stated) ---
    batch_size: int = 2
    """Products per micro-batch per worker."""
    grad_accum: int = 4
    """Micro-batches per optimizer step (paper: 4). Effective batch = batch_size x grad_accum x workers."""
    max_steps: int = 100
    """Optimizer steps in total (across resumes)."""
    lr: float = 1e-5
    """AdamW learning rate, constant (paper: 1e-5)."""
    weight_decay: float = 1e-2
    clip_grad: float = 1.0
    """Gradient-norm clipping (ReFL: 1.0); 0 disables it."""
    gradient_checkpointing: bool = False
    """Recompute ControlNet/UNet/VAE activations in the backward pass (memory for compute)."""
    seed: int = 0
    """Seeds the graded-step draws and the rollout noise (with the step, rank and product)."""

    # --- distribution ---
    strategy: str = "ddp"
    """``ddp`` (plain torch optimizer, DDP all-reduce) | ``deepspeed`` (ZeRO from ``zero_stage``)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0-3); only with ``strategy="deepspeed"``."""
    deepspeed_extra: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys merged over the generated config (e.g. ``{"bf16": {"enabled": true}}``
    on GPU)."""
    num_workers: int = 2
    """Ray Train workers."""
    use_gpu: bool = False
    """One GPU per worker."""

    # --- evaluation and checkpoints ---
    eval_every: int = 25
    """Evaluate on the held-out products every this many optimizer steps (and before and after)."""
    checkpoint_every: int = 25
    """Report a Ray Train checkpoint every this many optimizer steps (and at the end)."""
    eval_seeds: int = 3
    """Seeds per held-out product for the diversity figure (attempts 1..eval_seeds of the eval run seed)."""
    eval_run_seed: int = 0
    """The run seed of evaluation generations (``engine.seeds.attempt_seed``), fixed across evaluations."""
    measure_attempts: int = 0
    """If > 0, also run Recurrent Generation (up to this many attempts) on the held-out products before
    and after training and report the measured mean attempts."""

    def __post_init__(self) -> None:
        if isinstance(self.generator, dict):
            self.generator = from_dict(GeneratorConfig, self.generator)
        if self.regulariser not in REGULARISERS:
            raise ValueError(f"regulariser must be one of {REGULARISERS}, got {self.regulariser!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")
        if not 1 <= self.grad_window <= self.generator.steps:
            raise ValueError(
                f"grad_window must be in [1, generator.steps={self.generator.steps}], got {self.grad_window}"
            )
        if self.generator.scheduler not in ("ddim", "euler_a"):
            raise ValueError("RFFT needs an x0 prediction from the scheduler: use ddim or euler_a")
        for name in ("batch_size", "grad_accum", "max_steps", "num_workers", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0 or self.lr <= 0 or self.clip_grad < 0:
            raise ValueError("beta and clip_grad must be >= 0 and lr > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RFFTConfig:
        """The config from plain data, ``generator`` included (``cluster.configs.from_dict``: unknown keys
        are refused at every level)."""
        return from_dict(cls, d)

    def deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed config for this run: batch arithmetic, clipping and ZeRO stage from the fields above."""
        cfg: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "gradient_clipping": self.clip_grad,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        for key, value in self.deepspeed_extra.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
        return cfg
