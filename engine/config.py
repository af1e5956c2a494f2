"""Typed configs of the engine: the generator, the conditioning, the scorer and the catalog refresh. Each field
says what it means and its units.

The jobs read their defaults from here while they build their parsers, so this module stays light (no torch,
ray or pyarrow).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cluster.resources import ResourceConfig
from rfnet.config import DEFAULT_PRESET

SCHEDULERS = ("ddim", "euler_a", "dpmpp_sde_karras")

PRESET_SAMPLING = {"tiny": (128, 10), "toy": (128, 20)}
"""Canvas side and denoising steps a preset runs at by default: the tiny preset is random and small, and only
fast at small canvases and few steps; the toy generator was trained at a 128 px canvas. Any other model takes ``GeneratorConfig``'s own defaults (512, 40). Every
job (refresh, generate, train-rfft, eval-generator) and ``RFFTConfig`` take their defaults from here, so a
ControlNet fine-tuned at the default size is run at that size too."""


@dataclass
class GeneratorConfig:
    """Which generator to build and how to sample from it."""

    base_model: str = "tiny"
    """``tiny`` | ``sd15`` (random-weight presets) | a diffusers SD 1.5-family folder | a single-file
    ``.safetensors`` SD 1.5 checkpoint."""
    controlnet: str | None = None
    """A diffusers ControlNet folder (canny). ``None`` takes the preset's own random ControlNet; a real
    base model needs one."""
    base_config: str | None = None
    """Only for a single-file checkpoint: a diffusers SD 1.5 folder whose configs and tokenizer describe
    it (weights not needed). ``None`` uses the built-in SD 1.5 configs and the project's offline tokenizer,
    which is fine for random or test weights but not CLIP's real vocabulary."""
    lora: str | None = None
    """A LoRA ``.safetensors`` file fused into the UNet (and text encoder, if it has weights for it)."""
    lora_scale: float = 0.8
    """LoRA strength when fused (the authors use 0.8). 0 leaves the model unchanged."""
    scheduler: str = "ddim"
    """``ddim`` (default, eta 0) | ``euler_a`` ("Euler a") | ``dpmpp_sde_karras`` ("DPM++ SDE Karras")."""
    size: int = 512
    """Canvas side in pixels (square). Must be a multiple of the model's VAE factor x 8."""
    steps: int = 40
    """Denoising steps per image."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale (1 disables CFG)."""
    conditioning_scale: float = 1.0
    """ControlNet residual scale."""
    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""
    dtype: str = "fp32"
    """Weight precision on GPU: ``fp32`` | ``bf16`` | ``fp16`` (CPU always runs fp32)."""

    @classmethod
    def for_model(
        cls, base_model: str, size: int | None = None, steps: int | None = None, **fields
    ) -> GeneratorConfig:
        """A config for ``base_model`` whose unset ``size`` and ``steps`` are that model's defaults
        (:data:`PRESET_SAMPLING` for presets, else this class's)."""
        default_size, default_steps = PRESET_SAMPLING.get(base_model, (cls.size, cls.steps))
        return cls(base_model=base_model, size=size or default_size, steps=steps or default_steps, **fields)

    def __post_init__(self) -> None:
        self.scheduler = normalise_scheduler(self.scheduler)
        if self.size <= 0 or self.size % 8:
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables CFG), got {self.guidance_scale}")


_SCHEDULER_ALIASES = {
    "ddim": "ddim",
    "eulera": "euler_a",
    "eulerancestral": "euler_a",
    "dpmppsdekarras": "dpmpp_sde_karras",
    "dpmsdekarras": "dpmpp_sde_karras",
}


def normalise_scheduler(name: str) -> str:
    """Accept the authors' spellings ("Euler a", "DPM++ SDE Karras") as well as ours."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    if key not in _SCHEDULER_ALIASES:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return _SCHEDULER_ALIASES[key]


@dataclass
class ConditioningConfig:
    """How a product cutout becomes the generator's inputs (docs/design.md, "The generation path", steps 1-4)."""

    size: int = 512
    """Canvas side in pixels; equal to the generator's."""
    image_scale: float = 0.75
    """The product's longer side as a fraction of the canvas (the authors' configs: 0.7-0.78). A prompt
    template's own ``image_scale`` overrides it."""
    keep_loc: bool = False
    """Keep the product where it is in the source image (only resize the whole image to the canvas)
    instead of cropping to it and centring."""
    dilate_px_at_512: int = 20
    """Side of the square dilation kernel of the inpaint mask at a 512 px canvas; scaled with the canvas."""
    canny_low: int = 100
    canny_high: int = 200
    max_pixels: int = 40_000_000
    """Source images whose header claims more pixels are refused before decoding (decompression bombs)."""
    max_bytes: int = 64 * 1024 * 1024
    """Source files larger than this are refused unread."""
    min_side: int = 8
    """Source images (and product bounding boxes) smaller than this on either side are refused."""

    def __post_init__(self) -> None:
        if not 0.05 <= self.image_scale <= 1.0:
            raise ValueError(f"image_scale must be in [0.05, 1], got {self.image_scale}")
        if self.size <= 0 or self.size % 8:
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")


FIXED_RATE_PREFIX = "fixed-rate:"


@dataclass
class ScorerConfig:
    """Which judge scores the candidates (``engine.score.ScoreStage``) and its auxiliary models."""

    rfnet: str = DEFAULT_PRESET
    """``tiny`` | ``toy`` (shipped, trained) | an RFNet checkpoint folder | ``inspector`` | ``fixed-rate:P``
    (benchmarks only, see ``engine.score``)."""
    threshold: float | None = None
    """Accept when P(Available) >= threshold; ``None`` takes the checkpoint's."""
    depth: str = DEFAULT_PRESET
    """Depth model: ``tiny``, ``toy`` (trained on synthetic scenes) or a transformers depth-estimation folder."""
    saliency: str = DEFAULT_PRESET
    """Saliency model: ``tiny``, ``paper`` (U^2-Net, random), ``toy`` (trained on synthetic scenes), U^2-Net's
    ``u2net.pth`` / ``u2netp.pth`` or a saliency checkpoint folder."""
    device: str = "auto"
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``."""

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.rfnet.startswith(FIXED_RATE_PREFIX):
            rate = float(self.rfnet[len(FIXED_RATE_PREFIX) :])
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{self.rfnet}: the rate must be in [0, 1]")

    def checked(self) -> ScorerConfig:
        """This config with its model paths checked and made absolute (``engine.score.checked_scorer_paths``)."""
        from engine.score import checked_scorer_paths

        rfnet, depth, saliency = checked_scorer_paths(self.rfnet, self.depth, self.saliency)
        return replace(self, rfnet=rfnet, depth=depth, saliency=saliency)


@dataclass
class RefreshConfig:
    """One catalog refresh (``engine.pipeline.run_refresh``): inputs, models, the feedback loop, resources."""

    input: str
    """Folder of cutouts or a manifest (.parquet/.csv/.jsonl); local or any fsspec URI."""
    output: str
    """Output root (local or fsspec URI). Rerunning with the same output resumes."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    prompts: str | None = None
    """Prompt config in the authors' format; None = bundled."""
    run_seed: int = 0
    """Every attempt's seed is a pure function of (run_seed, SKU id, attempt)."""
    max_attempts: int = 5
    """Attempt budget K per SKU; a SKU with no accepted candidate by then ends needs_review."""
    rotate_after: int = 2
    """Next prompt template after this many failed attempts (0 = never)."""
    mix_caption: bool = False
    """Prefix each product's caption to the prompt."""
    success_target: float = 0.9
    """When batches would run part-empty, give each pending SKU enough candidates to be accepted with
    this probability at the acceptance rate seen so far (within its remaining budget)."""
    stage_rows_per_file: int = 5000
    """Rows per staged input file (the granularity Ray Data reads the catalog in)."""
    round_retries: int = 3
    """How often a round whose execution fails for a system reason (lost node/actor/object) is rerun."""
    progress: bool = True
    """Show a live progress bar."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.generator.size != self.conditioning.size:
            raise ValueError("generator and conditioning canvas sizes differ")
        if self.round_retries < 0:
            raise ValueError(f"round_retries must be >= 0, got {self.round_retries}")
        if not 0 < self.success_target < 1:
            raise ValueError("success_target must be in (0, 1)")
