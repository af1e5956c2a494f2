"""``GeneratorTrainConfig``: every knob of the toy generator recipe (``toy.train_generator``), typed and documented.

A module of its own, importing nothing heavy, so ``adloop train-generator --help`` shows the defaults at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STAGES = ("vae", "unet", "controlnet")
STRATEGIES = ("ddp", "deepspeed")
# Which components each stage trains (and so writes); the others it loads frozen from earlier stages.
TRAINS = {"vae": ("vae",), "unet": ("unet", "text_encoder"), "controlnet": ("controlnet",)}


@dataclass
class GeneratorTrainConfig:
    """Everything one toy-generator training needs; ``fit`` writes it resolved next to the outputs."""

    data: str
    """A scene set folder (``adloop synth scenes``); its ``size`` is the canvas."""
    output: str
    """Output folder: ``ray/`` (runs and checkpoints), ``components/``, ``pipeline/``, ``train_log.json``."""
    name: str = "generator"
    """Ray Train run-name prefix; the same ``output`` + ``name`` resumes."""
    stages: tuple[str, ...] = STAGES
    """Stages to run, in recipe order (a later stage needs the earlier ones' components in ``output``)."""
    vae_steps: int = 2000
    """Optimizer steps of the VAE stage."""
    unet_steps: int = 6000
    """Optimizer steps of the UNet + text-encoder stage."""
    controlnet_steps: int = 1500
    """Optimizer steps of the ControlNet stage."""
    vae_batch_size: int = 8
    """VAE samples per step *per worker*."""
    vae_crop: int = 64
    """The VAE trains on random square crops of this side (it is fully convolutional, so it then works on the
    whole canvas; SD's autoencoder was trained on crops too). 0 = whole images."""
    batch_size: int = 8
    """UNet / ControlNet samples per step *per worker*; the global batch is this times ``num_workers``."""
    vae_lr: float = 1e-3
    """AdamW learning rate of the VAE stage."""
    lr: float = 5e-4
    """AdamW learning rate of the UNet and ControlNet stages."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up at the start of each stage; after it the rate follows a half cosine down
    to zero at the stage's last step (a short run gains most from annealing at its end)."""
    snr_gamma: float = 5.0
    """Min-SNR loss weighting of the UNet and ControlNet stages (Hang et al. 2023): a timestep's epsilon loss
    is weighted by min(SNR, gamma) / SNR, so the nearly clean steps stop dominating. 0 = unweighted."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    kl_weight: float = 1e-6
    """Weight of the VAE's KL term (SD's autoencoder recipe uses 1e-6)."""
    prompt_dropout: float = 0.1
    """Share of training prompts replaced by an unconditional prompt (empty, or the negative prompt)."""
    inpaint_share: float = 0.75
    """Share of UNet and ControlNet training samples shown as generation shows them: the cells outside the
    paint mask hold the product-on-white latents (the pipeline's inpainting blend) and only the painted
    cells count in the loss. The rest are whole scenes, the plain noise-prediction objective."""
    prompts: str | None = None
    """Prompt config (the authors' JSON format) whose negative prompts serve as unconditional text; None = bundled."""
    strategy: str = "ddp"
    """``"ddp"`` (torch DistributedDataParallel) or ``"deepspeed"`` (ZeRO stage ``zero_stage``)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (0, 1 or 2); ignored with ``ddp``."""
    num_workers: int = 2
    """Ray Train workers (one process each)."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker (also its torch thread count)."""
    use_gpu: bool = False
    """One GPU per worker (nccl) instead of CPU (gloo)."""
    seed: int = 0
    """Seed of initialisation, shuffling, noise and prompt dropout."""
    log_every: int = 50
    """Steps between loss-curve points (and Ray Train reports)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and always at a stage's end)."""

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; expected some of {STAGES}")
        if list(self.stages) != [s for s in STAGES if s in self.stages]:
            raise ValueError(f"stages must be in recipe order {STAGES}, got {self.stages}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.vae_crop < 0 or self.vae_crop % 8:
            raise ValueError(f"vae_crop must be 0 or a positive multiple of 8, got {self.vae_crop}")
        for name in ("vae_steps", "unet_steps", "controlnet_steps", "vae_batch_size", "batch_size", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.snr_gamma < 0:
            raise ValueError(f"snr_gamma must be >= 0, got {self.snr_gamma}")
        if not 0.0 <= self.inpaint_share <= 1.0:
            raise ValueError(f"inpaint_share must be in [0, 1], got {self.inpaint_share}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")

    def steps_of(self, stage: str) -> int:
        return getattr(self, f"{stage}_steps")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
