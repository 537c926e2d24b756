"""What hv_generate_video.py writes, by --output_type: `<stem>.mp4` (a one-frame video: `<stem>.png`), one PNG a
frame in `<stem>/<stem>_000.png, _001.png...` (images: musubi-tuner's names), `<stem>_latent.safetensors`
(latent; musubi-tuner's format, generation/latent_files.py). Each file is written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from generation.latent_files import SEED_KEY, write_latent_file
from generation.options import GenerateConfig, OutputOptions


def output_stem(output: OutputOptions, seed: int, suffix: str = "") -> Path:
    """<save_path>/<output_name>, or a name made of the time and the seed; `suffix`: a decoded file's name."""
    name = output.output_name or f"{time.strftime('%Y%m%d-%H%M%S')}_{seed}"
    return Path(output.save_path) / f"{name}{suffix}"


def latent_metadata(config: GenerateConfig, seed: int, steps_run: int) -> dict[str, str] | None:
    """What made the latents, in the latent file's header: musubi-tuner's keys, then ours; None: --no_metadata."""
    if config.musubi_output.no_metadata:
        return None
    files = config.lora.lora_weight
    mults = config.lora.multipliers() if files else []
    loras = [{"file": Path(f).name, "multiplier": m} for f, m in zip(files, mults, strict=True)]
    sampling = config.sampling
    height, width = sampling.video_size
    metadata = {
        SEED_KEY: str(seed),
        "prompt": sampling.prompt,
        "height": str(height),
        "width": str(width),
        "video_length": str(sampling.video_length),
        "infer_steps": str(steps_run),  # musubi-tuner's: the steps run (fewer in video-to-video)
        "guidance_scale": str(sampling.guidance_scale),
        "embedded_cfg_scale": str(sampling.embedded_cfg_scale),
        "flow_shift": str(sampling.flow_shift),
        "loras": json.dumps(loras),
    }
    if sampling.negative_prompt is not None:
        metadata["negative_prompt"] = sampling.negative_prompt
    return metadata


def decode(config: GenerateConfig, latents: torch.Tensor, device: torch.device, dtype: torch.dtype):
    """uint8 (F, H, W, 3) frames of one video's latents (1, 16, F', H', W')."""
    from hunyuan_model.vae import decode_latents, enable_vae_tiling, load_vae, set_vae_chunk_size

    assert config.files.vae is not None  # GenerateConfig: decoding needs --vae
    vae = load_vae(config.files.vae, dtype=dtype, device=device)
    if config.encoder_memory.vae_chunk_size:
        set_vae_chunk_size(vae, config.encoder_memory.vae_chunk_size)
    enable_vae_tiling(vae, config.sampling.vae_spatial_tile_sample_min_size)  # always, as musubi-tuner
    return decode_latents(vae, latents)[0]


def write_images(frames: torch.Tensor, stem: Path) -> Path:
    """One PNG per frame in the folder `stem`, named `<stem name>_000.png`... (musubi-tuner's names)."""
    from hv_common.video_io import write_png

    stem.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        write_png(frame, stem / f"{stem.name}_{index:03d}.png")
    return stem


def write_decoded(config: GenerateConfig, frames: torch.Tensor, stem: Path) -> Path:
    from hv_common.video_io import write_media

    if config.output.output_type == "images":
        return write_images(frames, stem)
    return write_media(frames, stem, fps=config.sampling.fps)


def write_outputs(
    config: GenerateConfig,
    latents: torch.Tensor,
    stem: Path,
    metadata: dict[str, str] | None,
    device: torch.device,
    vae_dtype: torch.dtype,
) -> list[Path]:
    written = []
    if config.output.writes_latent:
        written.append(
            write_latent_file(latents, stem.with_name(stem.name + "_latent.safetensors"), metadata)
        )
    if config.output.decodes:
        written.append(write_decoded(config, decode(config, latents, device, vae_dtype), stem))
    return written
