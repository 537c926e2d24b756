"""HunyuanVideo's causal 3D VAE through diffusers' AutoencoderKLHunyuanVideo (reused, not vendored).

`--vae` accepts what users have: the original `vae/pytorch_model.pt` (read with weights_only=True; its keys are
already diffusers' names), the same weights as safetensors (ComfyUI's repackaged file), or a diffusers folder.
diffusers is imported only when a VAE is actually needed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import read_state_dict
from .errors import CheckpointError

# From diffusers.models, not the top-level diffusers: type checkers read the top level's TYPE_CHECKING block,
# which names the dummy stand-ins (for installs without torch) that have none of the model's methods.
if TYPE_CHECKING:
    from diffusers.models import AutoencoderKLHunyuanVideo

_VAE_MARKER = "encoder.conv_in.conv.weight"
_PREFIXES = ("vae.", "first_stage_model.", "model.")


def _vae_state_dict(path: Path) -> dict[str, torch.Tensor]:
    sd = read_state_dict(path)
    if _VAE_MARKER not in sd:
        for prefix in _PREFIXES:
            if prefix + _VAE_MARKER in sd:
                sd = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
                break
    if _VAE_MARKER not in sd:
        first = next(iter(sorted(sd)), None)
        raise CheckpointError(f"{path}: not a HunyuanVideo VAE: {len(sd)} keys, first {first!r}")
    return sd


def _config_from_shapes(sd: dict[str, torch.Tensor]) -> dict:
    """The architecture of a single-file VAE, from its shapes (the 720p VAE's values where shapes are silent)."""
    pattern = re.compile(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.conv\.weight")
    blocks: dict[int, int] = {}
    resnets: set[int] = set()
    for key, value in sd.items():
        if m := pattern.fullmatch(key):
            blocks[int(m.group(1))] = value.shape[0]
            resnets.add(int(m.group(2)))
    channels = tuple(blocks[i] for i in sorted(blocks))
    return {
        "block_out_channels": channels,
        "layers_per_block": len(resnets),
        "latent_channels": sd["post_quant_conv.weight"].shape[0],
        "down_block_types": ("HunyuanVideoDownBlock3D",) * len(channels),
        "up_block_types": ("HunyuanVideoUpBlock3D",) * len(channels),
        "norm_num_groups": 32 if all(c % 32 == 0 for c in channels) else min(channels),
    }


def load_vae(
    path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> AutoencoderKLHunyuanVideo:
    from diffusers.models import AutoencoderKLHunyuanVideo

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"VAE not found: {path}")
    if path.is_dir() and (path / "config.json").is_file():
        try:
            vae = AutoencoderKLHunyuanVideo.from_pretrained(path, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{path}: not a readable diffusers VAE folder ({' '.join(str(e).split())[:200]})"
            ) from None
        return vae.to(device).eval()
    sd = _vae_state_dict(path)
    try:
        with torch.device("meta"):
            vae = AutoencoderKLHunyuanVideo(**_config_from_shapes(sd))
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        result = vae.load_state_dict(sd, strict=False, assign=True)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: does not fit AutoencoderKLHunyuanVideo ({' '.join(str(e).split())[:200]})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        names = result.missing_keys or result.unexpected_keys
        kind = "missing" if result.missing_keys else "unexpected"
        raise CheckpointError(f"{path}: {len(names)} {kind} VAE keys, first {names[0]!r}")
    return vae.to(device).eval()


class ChunkedConv3d(nn.Conv3d):
    """An nn.Conv3d that, on inputs at least 1.5 chunks wide, computes its output in slices along the width
    (musubi-tuner's --vae_chunk_size for CausalConv3d): each slice reads only the input columns it needs (its
    own plus the kernel's overlap), so the peak activation memory is that of one slice and the result is the
    same as one call. Set on the VAE's causal convs by `set_vae_chunk_size` (a `__class__` swap: same weights,
    same keys)."""

    chunk_size: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            isinstance(self.padding, str)
            or self.padding_mode != "zeros"
            or x.shape[-1] < self.chunk_size * 1.5
        ):
            return super().forward(x)
        pad_w = self.padding[2]
        if pad_w:  # the zero padding along the width made explicit, so that each slice is a plain window
            x = F.pad(x, (pad_w, pad_w))
        stride_w, reach = self.stride[2], self.dilation[2] * (self.kernel_size[2] - 1) + 1
        out_width = (x.shape[-1] - reach) // stride_w + 1
        per_slice = max(1, self.chunk_size // stride_w)  # output columns per slice
        padding = (self.padding[0], self.padding[1], 0)
        slices = []
        for start in range(0, out_width, per_slice):
            stop = min(start + per_slice, out_width)
            window = x[..., start * stride_w : (stop - 1) * stride_w + reach]
            slices.append(
                F.conv3d(window, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
            )
        return torch.cat(slices, dim=-1)


def set_vae_chunk_size(vae: nn.Module, chunk_size: int | None) -> int:
    """`--vae_chunk_size N`: every causal conv of the VAE computes in width slices of about N columns (see
    ChunkedConv3d); None leaves the VAE as it is. Returns how many convs were changed."""
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    if chunk_size is None:
        return 0
    count = 0
    for module in vae.modules():
        if isinstance(module, HunyuanVideoCausalConv3d):
            conv = module.conv
            conv.__class__ = ChunkedConv3d
            cast(ChunkedConv3d, conv).chunk_size = chunk_size
            count += 1
    return count


def enable_vae_tiling(vae: AutoencoderKLHunyuanVideo, tile_size: int | None) -> None:
    """Spatial tiles of `tile_size` pixels (a quarter overlapping, as musubi-tuner's VAE does); None: off.
    diffusers tiles only frames larger than a tile."""
    if tile_size is None:
        return
    vae.enable_tiling(  # type: ignore[attr-defined]  # diffusers resolves its classes lazily: untyped here
        tile_sample_min_height=tile_size,
        tile_sample_min_width=tile_size,
        tile_sample_stride_height=tile_size * 3 // 4,
        tile_sample_stride_width=tile_size * 3 // 4,
    )


def frames_to_vae_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [-1, 1]."""
    return frames.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


@torch.no_grad()
def encode_frames(
    vae: AutoencoderKLHunyuanVideo, frames: torch.Tensor, generators: Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) frames -> scaled latents (B, 16, (F - 1) / 4 + 1, H / 8, W / 8), fp32.

    A sample of the posterior, as musubi-tuner caches it; one CPU generator per item makes each item's
    sample reproducible whatever the batch it was encoded in.
    """
    param = next(vae.parameters())
    x = frames_to_vae_input(frames).to(device=param.device, dtype=param.dtype)
    dist = vae.encode(x).latent_dist
    if generators is None:
        noise = torch.randn(dist.mean.shape)
    else:
        noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators])
    latents = dist.mean.float() + dist.std.float() * noise.to(param.device)
    return latents * vae.config["scaling_factor"]  # config: diffusers' FrozenDict, typed as a dict


@torch.no_grad()
def decode_latents(vae: AutoencoderKLHunyuanVideo, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> uint8 (B, F, H, W, 3) frames."""
    param = next(vae.parameters())
    video = vae.decode(latents.to(param.device, param.dtype) / vae.config["scaling_factor"]).sample
    return video.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()
