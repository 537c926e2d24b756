"""Latent files in musubi-tuner's format: written by --output_type latent / both, read back by --latent_path.

A safetensors file with one tensor, `latent`, of shape (16, F, H, W) (one video, no batch axis), and the
settings as text in its header: musubi-tuner's keys (`seeds`, `prompt`, `height`, `width`, `video_length`,
`infer_steps`, `guidance_scale`, `embedded_cfg_scale`, `negative_prompt` when given) and ours (`flow_shift`,
`loras`). --no_metadata writes none. musubi-tuner's --latent_path also reads torch.save files; so do we, with
weights_only=True (a tensor, nothing executable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hunyuan_model.sampler import LATENT_CHANNELS
from hv_common.errors import UserError

LATENT_KEY = "latent"
SEED_KEY = "seeds"  # musubi-tuner's name: one seed per file


@dataclass(frozen=True)
class LatentFile:
    path: Path
    latents: torch.Tensor  # (1, 16, F, H, W) float32
    seed: int  # from the header; 0 when it names none (musubi-tuner's fallback)


def write_latent_file(latents: torch.Tensor, path: Path, metadata: dict[str, str] | None) -> Path:
    """One video's latents (1, 16, F, H, W) as musubi-tuner writes them: (16, F, H, W) under `latent`."""
    from safetensors.torch import save_file

    from hv_common.atomic import atomic_write

    tensor = latents[0].contiguous() if latents.ndim == 5 else latents.contiguous()
    atomic_write(path, lambda tmp: save_file({LATENT_KEY: tensor}, str(tmp), metadata=metadata))
    return path


def _as_batch_of_one(value: object, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise UserError(f"--latent_path {path}: expected a floating-point tensor under {LATENT_KEY!r}")
    latents = value[None] if value.ndim == 4 else value
    if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[1] != LATENT_CHANNELS:
        raise UserError(
            f"--latent_path {path}: latents of shape {tuple(value.shape)}; expected ({LATENT_CHANNELS}, F, H, W)"
        )
    if not bool(torch.isfinite(latents).all()):
        raise UserError(f"--latent_path {path}: holds NaN or Inf values")
    return latents.float()


def read_latent_file(path_text: str) -> LatentFile:
    """A latent file written by us or by musubi-tuner, checked (one line for what is wrong)."""
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"--latent_path {path}: no such file")
    seed = 0
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if LATENT_KEY not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    raise UserError(f"--latent_path {path}: no tensor named {LATENT_KEY!r}")
                value = f.get_tensor(LATENT_KEY)
                seed_text = (f.metadata() or {}).get(SEED_KEY)
            if seed_text is not None:
                seed = int(seed_text)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:  # safetensors / torch raise their own types for torn or foreign files
        raise UserError(
            f"--latent_path {path}: cannot read it: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from None
    return LatentFile(path, _as_batch_of_one(value, path), seed)
