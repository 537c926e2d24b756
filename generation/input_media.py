"""The media a generation starts from: --video_path (video-to-video) and --image_path (SkyReels I2V), read,
fitted to --video_size as musubi-tuner fits them (scaled to cover, center-cropped: dataset/media.py's rule, to
the pixel), and encoded by the VAE into latents.

musubi-tuner's rules: the video's first --video_length frames (fewer is an error); the image is one frame.
The VAE's posterior is sampled with a generator seeded by --seed, so a seed gives the same video every run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hv_common.errors import UserError


def read_video(path_text: str, frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 (1, frames, height, width, 3): the first `frames` frames of a video file or a folder of images."""
    import numpy as np

    from dataset.media import decode_frames, fit_to_bucket

    path = Path(path_text)
    if not path.exists():
        raise UserError(f"--video_path {path}: no such file or folder")
    fitted = [
        fit_to_bucket(image, (width, height))
        for _, image in decode_frames(path, set(range(frames)))
        if image is not None
    ]
    if len(fitted) < frames:
        raise UserError(
            f"--video_path {path}: {len(fitted)} frames; --video_length {frames} needs at least that many"
        )
    return torch.from_numpy(np.stack(fitted))[None]


def read_image(path_text: str, height: int, width: int) -> torch.Tensor:
    """uint8 (1, 1, height, width, 3): the image fitted to the video's size."""
    from dataset.media import fit_to_bucket, load_image

    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"--image_path {path}: no such file")
    return torch.from_numpy(fit_to_bucket(load_image(path), (width, height)))[None, None]


def encode(vae_path: str, frames: torch.Tensor, seed: int, dtype: torch.dtype, device: torch.device):
    """Scaled latents (1, 16, (F - 1) / 4 + 1, H / 8, W / 8), float32 on the CPU; the VAE freed after."""
    from hunyuan_model.vae import encode_frames, load_vae

    vae = load_vae(vae_path, dtype=dtype, device=device)
    try:
        return encode_frames(vae, frames, [torch.Generator().manual_seed(seed)]).cpu()
    finally:
        del vae
        if device.type == "cuda":
            torch.cuda.empty_cache()
