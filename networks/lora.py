"""`LoRANetwork`: the LoRA modules of one model, their optimizer groups (LoRA+), and their file.

File keys: `lora_unet_<module path with . -> _>.lora_down.weight | .lora_up.weight | .alpha`, as musubi-tuner,
ComfyUI and the conversion scripts expect. `create_network` is what `--network_module networks.lora` calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import LORA_PREFIX, AdapterNetwork, LoRASpec, lora_name_for, network_spec, user_patterns
from .lora_module import LoRAModule
from .max_norm import MaxNormFigures, apply_max_norm
from .network_args import NetworkArgs

__all__ = [
    "LORA_PREFIX",
    "REFUSED_ARGS",
    "LoRAModule",
    "LoRANetwork",
    "LoRASpec",
    "create_network",
    "lora_name_for",
    "user_patterns",
]

# --network_args keys of the other modules of this package that LoRA does not take.
REFUSED_ARGS = {"factor": "factor is for networks.lokr (how LoKr splits each Linear); LoRA has no such split"}


class LoRANetwork(AdapterNetwork):
    kind = "lora"
    loras: list[LoRAModule]

    def make_module(
        self, lora_name: str, linear: nn.Linear, dim: int, alpha: float, device: torch.device
    ) -> LoRAModule:
        spec, args = self.spec, self.spec.args
        return LoRAModule(
            lora_name,
            linear,
            multiplier=spec.multiplier,
            lora_dim=dim,
            alpha=alpha,
            dropout=spec.dropout,
            rank_dropout=args.rank_dropout,
            module_dropout=args.module_dropout,
            device=device,
        )

    def plus_parameters(self, module: LoRAModule) -> list[torch.Tensor]:
        """lora_up is the zero-initialised factor (B in the LoRA+ paper): the one that learns too slowly at the
        shared lr."""
        return [module.lora_up.weight]

    def apply_max_norm_regularization(self, max_norm: float, device: torch.device | str) -> MaxNormFigures:
        """--scale_weight_norms (networks/max_norm.py): cap each module's update norm, in place."""
        pairs = [(lora.lora_down.weight, lora.lora_up.weight, lora.scale) for lora in self.loras]
        return apply_max_norm(pairs, max_norm, device)


def create_network(
    multiplier: float,
    network_dim: int | None,
    network_alpha: float | None,
    model: nn.Module,
    *,
    target_block_classes: Sequence[str],
    default_exclude_patterns: Sequence[str],
    neuron_dropout: float | None = None,
    network_args: NetworkArgs | Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> LoRANetwork:
    """Build (not apply) a LoRA network for `model`. `device` holds the LoRA weights (default CPU)."""
    spec = network_spec(multiplier, network_dim, network_alpha, neuron_dropout, network_args, REFUSED_ARGS)
    return LoRANetwork(model, spec, target_block_classes, default_exclude_patterns, device=device)
