"""Max-norm regularization of LoRA weights (kohya-ss's apply_max_norm_regularization, musubi-tuner's
--scale_weight_norms): each module whose update scale x up @ down has a Frobenius norm above the cap gets both
factors scaled by sqrt(cap / norm), so that the update's norm is the cap."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaxNormFigures:
    """What musubi-tuner logs: max_norm/keys_scaled, max_norm/average_key_norm, max_norm/max_key_norm."""

    keys_scaled: int  # modules scaled down this time
    average_key_norm: float  # the mean update norm after scaling
    max_key_norm: float  # the largest update norm after scaling


def update_norm(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """||scale x up @ down||_F without forming the (out, in) product: ||UD||^2 = sum((U^T U) * (D D^T)), two
    rank x rank matrices (the same number as kohya's up @ down, at a fraction of the cost on a 3072-wide DiT)."""
    u, d = up.float(), down.float()
    squared = ((u.T @ u) * (d @ d.T)).sum().clamp(min=0)
    return squared.sqrt() * abs(scale)


@torch.no_grad()
def apply_max_norm(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor, float]], max_norm: float, device: torch.device | str
) -> MaxNormFigures:
    """Cap each (down weight, up weight, alpha / rank) update's norm at `max_norm`, in place, with kohya's math:
    a norm below max_norm / 2 counts as max_norm / 2 (so the ratio is exactly 1 there), the ratio is
    min(norm, max_norm) / norm, and both factors take its square root."""
    norms: list[float] = []
    scaled = 0
    for down, up, scale in pairs:
        raw = update_norm(down.to(device), up.to(device), scale)
        norm = raw.clamp(min=max_norm / 2)
        ratio = float(norm.clamp(max=max_norm) / norm)
        if ratio != 1:
            scaled += 1
            root = ratio**0.5
            down.mul_(root)
            up.mul_(root)
        norms.append(float(raw) * ratio)
    if not norms:
        return MaxNormFigures(0, 0.0, 0.0)
    return MaxNormFigures(scaled, sum(norms) / len(norms), max(norms))
