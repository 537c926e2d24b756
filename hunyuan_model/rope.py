"""3D rotary position embedding over (t, h, w) latent patches, real (cos/sin) form."""

from __future__ import annotations

import torch


def rope_freqs(
    grid_size: tuple[int, int, int], rope_dims: tuple[int, int, int], theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T*H*W, head_dim) for tokens ordered t, then h, then w.

    Each axis takes its own slice of the head width; within a slice, each frequency covers two
    adjacent channels (repeat_interleave), the layout the original checkpoints were trained with.
    """
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in grid_size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).reshape(3, -1)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(rope_dims):
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim))
        angles = torch.outer(grid[axis], inv)
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1))
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, L, H, D) queries or keys by (L, D) cos/sin; computed in fp32, returned in x's dtype."""
    x32 = x.float()
    pairs = x32.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return (x32 * cos + rotated * sin).type_as(x)
