"""Attention for the DiT. One function, so that optional kernels can be added behind it later.

Nothing here imports an optional package at module load, and nothing assumes CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """q, k, v: (B, L, H, D); attn_mask: bool, broadcastable to (B, H, Lq, Lk), True = attend.

    Returns (B, L, H * D).
    """
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
    )
    return out.transpose(1, 2).flatten(2)
