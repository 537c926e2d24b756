"""Using loaded LoRA files on a DiT: merged into the weights, or applied on the fly (several at once, each with
its own multiplier). Works on any file `load_lora` reads, whatever its modules and ranks: a LoRAModule is
built per module of the file, not selected by `--network_args` patterns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lora_files.io import LoadedLoRA
from lora_files.layouts import Factors
from networks.lora import lora_name_for
from networks.lora_module import LoRAModule

Scaled = list[tuple[Factors, float]]  # (a LoRA's factors for one module, its multiplier)


def by_module(loras: Sequence[tuple[LoadedLoRA, float]]) -> dict[str, Scaled]:
    out: dict[str, Scaled] = {}
    for lora, multiplier in loras:
        for name, f in lora.weights.items():
            out.setdefault(name, []).append((f, multiplier))
    return out


def _linear(model: nn.Module, name: str) -> nn.Linear:
    """The Linear a LoRA module names (check_fits has matched every name to a Linear's widths)."""
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} is a {type(module).__name__}, not a Linear: a LoRA adapts Linears only")
    return module


def merged_weight(weight: torch.Tensor, updates: Scaled) -> torch.Tensor:
    """weight + the sum of multiplier x update, summed in fp32 (on weight's device), in weight's dtype."""
    w = weight.to(torch.float32, copy=True)
    for f, multiplier in updates:
        w += f.delta(multiplier, w.device)
    return w.to(weight.dtype)


@torch.no_grad()
def merge_into(model: nn.Module, loras: Sequence[tuple[LoadedLoRA, float]]) -> None:
    """Fold the LoRAs into the model's Linear weights, in place."""
    for name, updates in by_module(loras).items():
        weight = _linear(model, name).weight
        weight.copy_(merged_weight(weight, updates))


def apply_on_the_fly(
    model: nn.Module, loras: Sequence[tuple[LoadedLoRA, float]], dtype: torch.dtype | None = None
) -> list[LoRAModule]:
    """Route each LoRA module of each file through a LoRAModule; `restore_all` undoes it. dtype: the LoRA
    weights' (default: each base Linear's), so the forward casts nothing."""
    applied: list[LoRAModule] = []
    for lora, multiplier in loras:
        for name, f in lora.weights.items():
            linear = _linear(model, name)
            device = linear.weight.device
            module = LoRAModule(
                lora_name_for(name), linear, multiplier, lora_dim=f.rank, alpha=f.alpha, device=device
            )
            with torch.no_grad():
                module.lora_down.weight.copy_(f.down)
                module.lora_up.weight.copy_(f.up)
            module.to(dtype or linear.weight.dtype).requires_grad_(False).eval()
            module.apply_to()
            applied.append(module)
    return applied


def restore_all(applied: Sequence[LoRAModule]) -> None:
    for module in reversed(applied):  # stacked LoRAs unwind last-first
        module.restore()
