"""--base_weights / --base_weights_multiplier: LoRA files merged into the DiT before training, as musubi-tuner
does, so the new LoRA learns on top of them (any layout convert_lora.py reads; fp8 weights included)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from hv_common.errors import UserError

if TYPE_CHECKING:
    from training.options import TrainingOptions

logger = logging.getLogger(__name__)


def check_base_weights(training: TrainingOptions) -> None:
    """Before the DiT loads: every file is there."""
    for path in training.base_weights:
        if not Path(path).is_file():
            raise UserError(f"--base_weights {path}: no such file")


def base_multipliers(training: TrainingOptions) -> list[float]:
    """One per file: the given ones in order, 1.0 for the rest (musubi-tuner's rule)."""
    given = training.base_weights_multiplier
    return [given[i] if i < len(given) else 1.0 for i in range(len(training.base_weights))]


@torch.no_grad()
def merge_base_weights(model: nn.Module, training: TrainingOptions, dit: str) -> None:
    """Fold each --base_weights file x its multiplier into the DiT's Linear weights, in place. Every file is
    read and checked against the DiT first; an fp8 weight is dequantized, merged and quantized again."""
    if not training.base_weights:
        return
    from hunyuan_model.fp8 import Fp8Linear, dequantize, quantize_weight
    from lora_files.apply import by_module, merged_weight
    from lora_files.io import load_checked

    shapes = {
        name: (m.out_features, m.in_features) for name, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    loras = load_checked(list(training.base_weights), base_multipliers(training), shapes, dit)
    updates = by_module(loras)
    for name, scaled in updates.items():
        linear = model.get_submodule(name)
        if isinstance(linear, Fp8Linear):
            dense = dequantize(linear.weight, linear.scale_weight, torch.float32)
            weight, scale = quantize_weight(merged_weight(dense, scaled), linear.scale_weight is not None)
            linear.weight = nn.Parameter(weight, requires_grad=False)
            linear.scale_weight = scale
        else:
            weight = cast(nn.Linear, linear).weight  # load_checked matched every name to a Linear
            weight.copy_(merged_weight(weight, scaled))
    logger.info(
        "--base_weights: %d LoRA file(s) merged into the DiT (%d modules): %s",
        len(loras),
        len(updates),
        ", ".join(
            f"{path} x{m:g}"
            for path, m in zip(training.base_weights, base_multipliers(training), strict=True)
        ),
    )
