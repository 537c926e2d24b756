"""The flow-matching Euler sampler with a shifted schedule: the trainer's previews and hv_generate_video.py.

Convention (the trainer's): x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0 at timestep t * 1000,
so one Euler step from sigma to sigma_next is x += (sigma_next - sigma) v. The schedule is
linspace(1, 0, steps + 1) shifted by t' = shift t / (1 + (shift - 1) t), as musubi-tuner's
FlowMatchDiscreteScheduler(reverse=True, solver="euler") computes it.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from .text_encoders import TextEmbeddings

LATENT_CHANNELS = 16
SPATIAL_FACTOR = 8  # VAE: 8x in height and width
TEMPORAL_FACTOR = 4  # VAE: 4x in time, causal (frame 0 alone)
SIZE_MULTIPLE = 16  # the VAE's 8x times the DiT's 2x2 patches
I2V_IN_CHANNELS = 32  # SkyReels V1 I2V: the noisy latents and the image's, 16 channels each


def validate_request(height: int, width: int, frames: int, steps: int, flow_shift: float) -> None:
    """Raise a ValueError naming the first value the DiT and VAE cannot work with."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % SIZE_MULTIPLE:
            raise ValueError(f"{name} {value}: must be a positive multiple of {SIZE_MULTIPLE} pixels")
    if frames < 1 or (frames - 1) % TEMPORAL_FACTOR:
        raise ValueError(f"frames {frames}: must be 4k + 1 (1, 5, 9, ...): the VAE packs 4 frames per latent")
    if steps < 1:
        raise ValueError(f"steps {steps}: at least one denoising step is needed")
    if not flow_shift > 0:
        raise ValueError(f"flow_shift {flow_shift}: must be positive")


def latent_shape(height: int, width: int, frames: int) -> tuple[int, int, int, int, int]:
    return (
        1,
        LATENT_CHANNELS,
        (frames - 1) // TEMPORAL_FACTOR + 1,
        height // SPATIAL_FACTOR,
        width // SPATIAL_FACTOR,
    )


def shifted_sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 noise levels from 1 to 0 (float32, as musubi-tuner computes them)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise from a CPU generator: a seed gives the same video on any device.

    Drawn one latent frame at a time (musubi-tuner's order), so the first frame's noise does not depend on
    the frame count: a one-frame preview shows the first frame of the video with the same seed.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    per_frame = (*shape[:2], 1, *shape[3:])
    return torch.cat([torch.randn(per_frame, generator=generator) for _ in range(shape[2])], dim=2)


def _pad_tokens(emb: TextEmbeddings, length: int) -> TextEmbeddings:
    extra = length - emb.llm.shape[1]
    if extra == 0:
        return emb
    llm = torch.cat([emb.llm, emb.llm.new_zeros(emb.llm.shape[0], extra, emb.llm.shape[2])], dim=1)
    mask = torch.cat([emb.llm_mask, emb.llm_mask.new_zeros(emb.llm_mask.shape[0], extra)], dim=1)
    return TextEmbeddings(llm=llm, llm_mask=mask, clip_pooled=emb.clip_pooled)


def _conditioning(
    embeddings: TextEmbeddings, negative: TextEmbeddings | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(llm, mask, clip) on the device; with a negative, a batch of two: [negative, positive]."""
    parts = [embeddings] if negative is None else [negative, embeddings]
    length = max(p.llm.shape[1] for p in parts)
    parts = [_pad_tokens(p, length) for p in parts]  # the same length so they batch
    llm = torch.cat([p.llm for p in parts]).to(device=device, dtype=dtype)
    mask = torch.cat([p.llm_mask for p in parts]).to(device=device, dtype=torch.bool)
    clip = torch.cat([p.clip_pooled for p in parts]).to(device=device, dtype=dtype)
    return llm, mask, clip


@torch.no_grad()
def sample_latents(
    model: nn.Module,
    embeddings: TextEmbeddings,
    *,
    height: int,
    width: int,
    frames: int,
    steps: int,
    embedded_guidance_scale: float,
    flow_shift: float,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
    cfg_scale: float | None = None,
    negative: TextEmbeddings | None = None,
    progress: bool = True,
    split_uncond: bool = False,
    init_latents: torch.Tensor | None = None,
    strength: float = 1.0,
    image_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise one video from seeded noise; returns float32 latents (1, 16, (F - 1) / 4 + 1, H / 8, W / 8).

    embeddings: one prompt (batch 1). cfg_scale: true classifier-free guidance against `negative` (two model
    evaluations per step, batched); None or 1.0 is a single evaluation. The model runs as it is: the caller
    chooses eval mode and any LoRA. split_uncond: with CFG, the two samples in two model calls (batch 1 each).

    init_latents (video-to-video, musubi-tuner's rule): the last int(steps * strength) steps only, started from
    init_latents noised to that step's level; 0 steps returns init_latents. image_latents (SkyReels I2V, a DiT
    of 32 input channels): (1, 16, 1, H / 8, W / 8), concatenated to the latents as channels 16-31 at every
    step (frame 0 the image, the other frames zeros).
    """
    validate_request(height, width, frames, steps, flow_shift)
    if embeddings.llm.shape[0] != 1:
        raise ValueError(f"one prompt at a time: embeddings have batch {embeddings.llm.shape[0]}")
    use_cfg = cfg_scale is not None and cfg_scale != 1.0
    if use_cfg and negative is None:
        raise ValueError("cfg_scale needs negative embeddings (encode an empty prompt for plain CFG)")
    device = torch.device(device)
    llm, mask, clip = _conditioning(embeddings, negative if use_cfg else None, device, dtype)
    batch = llm.shape[0]
    # Timestep and guidance stay float32: the embedders cast after the sinusoids (bf16 would round 937.5).
    guidance = torch.full((batch,), embedded_guidance_scale * 1000.0, device=device)
    sigmas = shifted_sigmas(steps, flow_shift).tolist()
    # The running latents stay float32 whatever the model's dtype: the Euler sum accumulates.
    shape = latent_shape(height, width, frames)
    latents = initial_noise(shape, seed).to(device)
    first = 0
    if init_latents is not None:
        first = steps - int(steps * strength)
        start = init_latents.to(device=device, dtype=torch.float32)
        latents = latents * sigmas[first] + start * (1.0 - sigmas[first])
    condition = None if image_latents is None else _image_condition(image_latents, shape, device, dtype)
    chunk = 1 if split_uncond else batch
    for i in tqdm(range(first, steps), desc="sampling", disable=not progress, leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = latents.to(dtype).expand(batch, -1, -1, -1, -1)
        if condition is not None:
            x = torch.cat([x, condition.expand(batch, -1, -1, -1, -1)], dim=1)
        t = torch.full((batch,), sigma * 1000.0, device=device)
        velocity = torch.cat(
            [
                model(
                    x[j : j + chunk],
                    t[j : j + chunk],
                    llm[j : j + chunk],
                    mask[j : j + chunk],
                    clip[j : j + chunk],
                    guidance=guidance[j : j + chunk],
                ).float()
                for j in range(0, batch, chunk)
            ]
        )
        if use_cfg and cfg_scale is not None:
            uncond, cond = velocity.chunk(2)
            velocity = uncond + cfg_scale * (cond - uncond)
        latents = latents + (sigma_next - sigma) * velocity
    return latents


def _image_condition(
    image_latents: torch.Tensor, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """SkyReels I2V's extra input channels: the image's latent as frame 0, zeros after (musubi-tuner's)."""
    if tuple(image_latents.shape) != (*shape[:2], 1, *shape[3:]):
        raise ValueError(f"image latents {tuple(image_latents.shape)} do not fit latents {shape}")
    condition = torch.zeros(shape, device=device, dtype=dtype)
    condition[:, :, :1] = image_latents.to(device=device, dtype=dtype)
    return condition


def i2v_input(x: torch.Tensor, clean_latents: torch.Tensor) -> torch.Tensor:
    """A SkyReels I2V DiT's input in training: the noisy latents, then the clean first latent frame (zeros after)
    as 16 more channels, as musubi-tuner trains it."""
    condition = torch.zeros_like(x)
    condition[:, :, :1] = clean_latents[:, :, :1].to(x.dtype)
    return torch.cat([x, condition], dim=1)
