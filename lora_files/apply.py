"""Using loaded LoRA files on a DiT: merged into the weights, or applied on the fly (several at once, each with
its own multiplier). Works on any file `load_lora` reads, whatever its modules and ranks: a LoRAModule is
built per LoRA module of the file, not selected by `--network_args` patterns, and a DeltaModule per LoHa / LoKr
module (its update is rebuilt from the factors at each forward, so no full-size copy stays in memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lora_files.io import LoadedLoRA
from lora_files.layouts import Factors, ModuleWeights
from lora_files.lycoris import LoHa, LoKr
from networks.lora import lora_name_for
from networks.lora_module import LoRAModule

Scaled = list[tuple[ModuleWeights, float]]  # (a file's weights for one module, its multiplier)


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


class DeltaModule(nn.Module):
    """A LyCORIS module (LoHa / LoKr) applied on the fly to a Linear: out = base(x) + x @ (multiplier x update)^T.
    The same apply_to / restore as LoRAModule, so both stack and unwind alike."""

    def __init__(self, name: str, weights: LoHa | LoKr, linear: nn.Linear, multiplier: float):
        super().__init__()
        self.name = name
        self.multiplier = multiplier
        self.source = weights  # the factors; moved once to the device the first forward runs on
        self._org: list[nn.Linear] = [linear]  # a list: the base Linear is no submodule (state dict!)
        self._org_forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._patched_before = False

    def apply_to(self) -> None:
        org = self._org[0]
        self._patched_before = "forward" in vars(org)
        self._org_forward = org.forward
        vars(org)["forward"] = self.forward

    def restore(self) -> None:
        if self._org_forward is None:
            return
        if self._patched_before:
            vars(self._org[0])["forward"] = self._org_forward
        else:
            del self._org[0].forward
        self._org_forward = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._org_forward is None:
            raise RuntimeError(f"{self.name} is not applied (apply_to): no base forward to call")
        out = self._org_forward(x)
        if self.source.device != x.device:
            self.source = self.source.to(x.device)
        update = self.source.delta(self.multiplier).to(x.dtype)
        return out + F.linear(x, update)


def apply_on_the_fly(
    model: nn.Module, loras: Sequence[tuple[LoadedLoRA, float]], dtype: torch.dtype | None = None
) -> list[LoRAModule | DeltaModule]:
    """Route each module of each file through a LoRAModule (LoRA) or a DeltaModule (LoHa / LoKr); `restore_all`
    undoes it. dtype: the LoRA weights' (default: each base Linear's), so the forward casts nothing."""
    applied: list[LoRAModule | DeltaModule] = []
    for lora, multiplier in loras:
        for name, f in lora.weights.items():
            linear = _linear(model, name)
            if not isinstance(f, Factors):
                delta = DeltaModule(name, f, linear, multiplier)
                delta.apply_to()
                applied.append(delta)
                continue
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


def restore_all(applied: Sequence[LoRAModule | DeltaModule]) -> None:
    for module in reversed(applied):  # stacked LoRAs unwind last-first
        module.restore()
