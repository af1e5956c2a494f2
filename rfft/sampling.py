"""The engine's inpainting-ControlNet denoising loop, split so that one late step can carry gradients.

Adapted from diffusers 0.42 ``pipelines/controlnet/pipeline_controlnet_inpaint.py``
(``StableDiffusionControlNetInpaintPipeline.__call__``, 4-channel-UNet branch, ``strength=1``, no guess
mode, no IP-Adapter, one ControlNet); changes:

- the loop body (step 8) is a function of its own, :func:`predict_noise`, that returns the two
  classifier-free-guidance halves separately and takes the ControlNet as an argument, so the trainable
  copy (possibly wrapped by DDP or DeepSpeed) and a frozen reference copy can run at the same ``x_t``;
- :func:`rollout` runs steps ``0 .. j-1`` without gradients, then step ``j`` with gradients through both
  CFG halves, and returns the scheduler's x0 prediction instead of ``x_{j-1}`` (ReFL, ImageReward);
- the x0 latent gets the inpainting blend the last step of the loop applies (product latents outside
  the mask), is VAE-decoded with gradients, and the product is pasted back in torch exactly as
  ``engine.conditioning.paste_back`` does in numpy, so the reward sees what the engine would ship;
- no ``torch.no_grad`` decorator, no callbacks, no progress bar, no safety checker.

Steps 3-7 (prompt encoding, control image, init image and mask, timesteps, latents and their random
draws) call the pipeline's own methods, in the pipeline's order, so the random numbers each
``torch.Generator`` yields are the same as in the engine's call: with gradients off, :func:`sample`
returns the engine's images bit for bit (``tests/rfft/test_sampling.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionControlNetInpaintPipeline


@dataclass
class Prepared:
    """Everything the loop needs for a batch of B rows, on the pipeline's device."""

    prompt_embeds: torch.Tensor
    """(2B, L, D): the negative-prompt embeddings, then the prompt embeddings (the pipeline's CFG order)."""
    control_image: torch.Tensor
    """(2B, 3, S, S) float in [0, 1], repeated for both CFG halves."""
    image_latents: torch.Tensor
    """(B, 4, h, w): VAE latents of the init image (product on white), scaled."""
    mask: torch.Tensor
    """(B, 1, h, w) in {0, 1}: 1 where the background is repainted (latent resolution)."""
    noise: torch.Tensor
    """(B, 4, h, w): the initial noise, reused to re-noise the product latents at each step."""
    latents: torch.Tensor
    """(B, 4, h, w): x_T."""
    product: torch.Tensor
    """(B, 4, S, S) float in [0, 1]: the laid-out product cutout (RGBA), for paste-back."""
    timesteps: torch.Tensor
    extra_step_kwargs: dict


def prepare(
    pipe: StableDiffusionControlNetInpaintPipeline,
    image: np.ndarray,
    inpaint_mask: np.ndarray,
    control: np.ndarray,
    product_rgba: np.ndarray,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    steps: int,
    size: int,
) -> Prepared:
    """Steps 3-7 of the pipeline's ``__call__`` for the engine's inputs (the columns ``condition_row`` makes).

    Args:
        image: (B, S, S, 3) uint8, the product on white. inpaint_mask: (B, S, S) uint8 {0, 255}.
        control: (B, S, S, 3) uint8 canny edges. product_rgba: (B, S, S, 4) uint8.
        seeds: one per row; each row gets its own CPU ``torch.Generator`` as in ``GenerateStage``.
    """
    device = pipe._execution_device
    batch = len(seeds)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    # The same numpy conversions GenerateStage.generate makes before calling the pipeline.
    image_np = np.asarray(image, dtype=np.float32) / 255.0
    mask_np = (np.asarray(inpaint_mask, dtype=np.float32) / 255.0)[..., None]
    control_np = np.asarray(control, dtype=np.float32) / 255.0

    # 3. Encode input prompt (uncond first, as the pipeline concatenates them).
    with torch.no_grad():
        prompt_embeds, negative_embeds = pipe.encode_prompt(list(prompts), device, 1, True, list(negative_prompts))
    prompt_embeds = torch.cat([negative_embeds, prompt_embeds])

    # 4. Prepare the control image.
    control_image = pipe.prepare_control_image(
        image=control_np,
        width=size,
        height=size,
        batch_size=batch,
        num_images_per_prompt=1,
        device=device,
        dtype=pipe.controlnet.dtype,
        crops_coords=None,
        resize_mode="default",
        do_classifier_free_guidance=True,
        guess_mode=False,
    )

    # 4.1 Preprocess mask and image.
    init_image = pipe.image_processor.preprocess(image_np, height=size, width=size).to(dtype=torch.float32)
    mask = pipe.mask_processor.preprocess(mask_np, height=size, width=size)
    masked_image = init_image * (mask < 0.5)

    # 5. Prepare timesteps (strength 1: every step).
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = pipe.scheduler.timesteps
    if hasattr(pipe.scheduler, "set_begin_index"):
        pipe.scheduler.set_begin_index(0)

    with torch.no_grad():
        # 6. Prepare latent variables: the init image's latents are drawn first, then the noise.
        latents, noise, image_latents = pipe.prepare_latents(
            batch,
            pipe.vae.config.latent_channels,
            size,
            size,
            prompt_embeds.dtype,
            device,
            generators,
            None,
            image=init_image,
            timestep=timesteps[:1].repeat(batch),
            is_strength_max=True,
            return_noise=True,
            return_image_latents=True,
        )
        # 7. Prepare mask latents. A 4-channel UNet never reads the masked-image latents, but encoding
        # them draws from each generator, and a stochastic scheduler's later draws depend on that.
        mask_latents, _ = pipe.prepare_mask_latents(
            mask, masked_image, batch, size, size, prompt_embeds.dtype, device, generators, True
        )
    product = torch.from_numpy(np.array(product_rgba, dtype=np.uint8)).to(device).permute(0, 3, 1, 2).float() / 255.0
    return Prepared(
        prompt_embeds=prompt_embeds,
        control_image=control_image,
        image_latents=image_latents,
        mask=mask_latents.chunk(2)[0],
        noise=noise,
        latents=latents,
        product=product,
        timesteps=timesteps,
        extra_step_kwargs=pipe.prepare_extra_step_kwargs(generators, 0.0),
    )


def prepare_batch(
    pipe: StableDiffusionControlNetInpaintPipeline,
    batch: dict[str, np.ndarray],
    steps: int,
    size: int,
    seeds: list[int] | None = None,
) -> Prepared:
    """``prepare`` over a batch of condition columns (``engine.prepare.condition_row`` rows, stacked);
    ``seeds`` default to the batch's ``seed`` column."""
    return prepare(
        pipe,
        image=batch["image"],
        inpaint_mask=batch["inpaint_mask"],
        control=batch["control"],
        product_rgba=batch["product_rgba"],
        prompts=[str(p) for p in batch["prompt"]],
        negative_prompts=[str(p) for p in batch["negative_prompt"]],
        seeds=[int(s) for s in (batch["seed"] if seeds is None else seeds)],
        steps=steps,
        size=size,
    )


def predict_noise(
    pipe: StableDiffusionControlNetInpaintPipeline,
    controlnet: torch.nn.Module,
    latents: torch.Tensor,
    t: torch.Tensor,
    prep: Prepared,
    conditioning_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of step 8 up to guidance: ControlNet + UNet on both CFG halves in one batch.

    Returns:
        ``(noise_pred_uncond, noise_pred_text)``, each (B, 4, h, w). Gradients flow into ``controlnet``
        when they are enabled (the UNet's own weights are frozen by the caller).
    """
    latent_model_input = torch.cat([latents] * 2)
    latent_model_input = pipe.scheduler.scale_model_input(latent_model_input, t)
    down_block_res_samples, mid_block_res_sample = controlnet(
        latent_model_input,
        t,
        encoder_hidden_states=prep.prompt_embeds,
        controlnet_cond=prep.control_image,
        conditioning_scale=conditioning_scale,
        guess_mode=False,
        return_dict=False,
    )
    noise_pred = pipe.unet(
        latent_model_input,
        t,
        encoder_hidden_states=prep.prompt_embeds,
        down_block_additional_residuals=down_block_res_samples,
        mid_block_additional_residual=mid_block_res_sample,
        return_dict=False,
    )[0]
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    return noise_pred_uncond, noise_pred_text


def _blend(pipe, latents: torch.Tensor, prep: Prepared, i: int) -> torch.Tensor:
    """The 4-channel-UNet inpainting blend after step ``i``: product latents, re-noised to the next step."""
    init_latents_proper = prep.image_latents
    if i < len(prep.timesteps) - 1:
        noise_timestep = prep.timesteps[i + 1]
        init_latents_proper = pipe.scheduler.add_noise(init_latents_proper, prep.noise, torch.tensor([noise_timestep]))
    return (1 - prep.mask) * init_latents_proper + prep.mask * latents


def decode(pipe: StableDiffusionControlNetInpaintPipeline, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to (B, 3, S, S) float in [0, 1] (the pipeline's decode + postprocess, in torch)."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return (image / 2 + 0.5).clamp(0, 1)


def paste_back(generated: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
    """``engine.conditioning.paste_back`` in torch, differentiable in ``generated``.

    Args:
        generated: (B, 3, S, S) float in [0, 1]. product: (B, 4, S, S) float in [0, 1] (RGBA).

    Returns:
        (B, 3, S, S): product pixels where alpha is 1, the generated ones where it is 0, blended between.
    """
    m = 1.0 - product[:, 3:4]
    return (1.0 - m) * product[:, :3] + m * generated


def _step_range(pipe, prep: Prepared, controlnet, latents, start: int, stop: int, guidance_scale, cond_scale):
    for i in range(start, stop):
        t = prep.timesteps[i]
        uncond, text = predict_noise(pipe, controlnet, latents, t, prep, cond_scale)
        noise_pred = uncond + guidance_scale * (text - uncond)
        latents = pipe.scheduler.step(noise_pred, t, latents, **prep.extra_step_kwargs, return_dict=False)[0]
        latents = _blend(pipe, latents, prep, i)
    return latents


@torch.no_grad()
def sample(
    pipe: StableDiffusionControlNetInpaintPipeline,
    controlnet: torch.nn.Module,
    prep: Prepared,
    guidance_scale: float = 7.5,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """The full loop without gradients; returns (B, 3, S, S) float in [0, 1] *before* paste-back."""
    latents = _step_range(
        pipe, prep, controlnet, prep.latents, 0, len(prep.timesteps), guidance_scale, conditioning_scale
    )
    return decode(pipe, latents)


@dataclass
class GradStep:
    """What one ReFL rollout returns: the graded image and the CFG halves at the gradient step."""

    images: torch.Tensor
    """(B, 3, S, S) float in [0, 1]: decoded x0 prediction with the product pasted back; carries gradients."""
    latents: torch.Tensor
    """(B, 4, h, w): x_t at the gradient step (detached)."""
    t: torch.Tensor
    """The scheduler timestep of the gradient step."""
    step_index: int
    noise_pred_uncond: torch.Tensor
    """(B, 4, h, w), with gradients."""
    noise_pred_text: torch.Tensor
    """(B, 4, h, w), with gradients."""
    ref_noise_pred_uncond: torch.Tensor | None = None
    """(B, 4, h, w): the frozen reference ControlNet's halves at the same x_t (no gradients), if asked for."""
    ref_noise_pred_text: torch.Tensor | None = None


def rollout(
    pipe: StableDiffusionControlNetInpaintPipeline,
    controlnet: torch.nn.Module,
    prep: Prepared,
    grad_step: int,
    guidance_scale: float = 7.5,
    conditioning_scale: float = 1.0,
    reference: torch.nn.Module | None = None,
) -> GradStep:
    """ReFL rollout: steps ``0 .. grad_step-1`` without gradients, then step ``grad_step`` with them.

    The x0 prediction at ``grad_step`` gets the inpainting blend, is decoded and has the product pasted
    back, all with gradients, so a reward on ``images`` backpropagates into ``controlnet``. With
    ``reference`` (a frozen ControlNet), its CFG halves at the same ``x_t`` come back too, computed before
    the scheduler steps (a stateful scheduler's ``scale_model_input`` depends on its step index).
    """
    if not 0 <= grad_step < len(prep.timesteps):
        raise ValueError(f"grad_step must be in [0, {len(prep.timesteps)}), got {grad_step}")
    with torch.no_grad():
        latents = _step_range(
            pipe, prep, controlnet, prep.latents, 0, grad_step, guidance_scale, conditioning_scale
        ).detach()
    t = prep.timesteps[grad_step]
    ref_uncond = ref_text = None
    if reference is not None:
        with torch.no_grad():
            ref_uncond, ref_text = predict_noise(pipe, reference, latents, t, prep, conditioning_scale)
    uncond, text = predict_noise(pipe, controlnet, latents, t, prep, conditioning_scale)
    noise_pred = uncond + guidance_scale * (text - uncond)
    out = pipe.scheduler.step(noise_pred, t, latents, **prep.extra_step_kwargs, return_dict=True)
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is None:
        raise ValueError(f"{type(pipe.scheduler).__name__} does not return an x0 prediction; use ddim or euler_a")
    x0 = (1 - prep.mask) * prep.image_latents + prep.mask * x0  # the last step's blend: clean product latents
    images = paste_back(decode(pipe, x0), prep.product)
    return GradStep(
        images=images,
        latents=latents,
        t=t,
        step_index=grad_step,
        noise_pred_uncond=uncond,
        noise_pred_text=text,
        ref_noise_pred_uncond=ref_uncond,
        ref_noise_pred_text=ref_text,
    )
