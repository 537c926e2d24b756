"""`--network_module networks.loha`: LoHa (the Hadamard product of two low-rank products, FedPara
arXiv:2108.06098) on the Linears networks.lora would wrap, with musubi-tuner's file layout:

    lora_unet_<name>.hada_w1_a (out, dim)   .hada_w1_b (dim, in)
    lora_unet_<name>.hada_w2_a (out, dim)   .hada_w2_b (dim, in)   .alpha ()

ΔW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / dim. hada_w2_a starts at zero, so a fresh network changes nothing.
--network_args as networks.lora (exclude / include / rank / alpha patterns, verbose, rank_dropout,
module_dropout); LoRA+ and --network_dropout are refused (LoHa has no up side and no rank-r activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .adapter_module import DeltaWeightModule
from .base import AdapterNetwork, network_spec
from .network_args import NetworkArgs

REFUSED_ARGS = {
    "loraplus_lr_ratio": "LoRA+ needs LoRA's up/down pair, and networks.loha has none (musubi-tuner logs "
    "that it is not effective and trains without it); use networks.lora for LoRA+",
    "factor": "factor is for networks.lokr (how LoKr splits each Linear); LoHa has no such split",
}


class HadamardWeight(torch.autograd.Function):
    """(a1 @ b1) * (a2 @ b2) * scale whose backward recomputes the two (out, in) products instead of keeping
    them: a LoHa step then holds one full-size matrix per module, not three."""

    @staticmethod
    def forward(ctx: Any, a1, b1, a2, b2, scale: float) -> torch.Tensor:
        ctx.save_for_backward(a1, b1, a2, b2)
        ctx.scale = scale
        return (a1 @ b1) * (a2 @ b2) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        a1, b1, a2, b2 = ctx.saved_tensors
        grad = grad * ctx.scale
        g1 = grad * (a2 @ b2)  # d/d(a1 @ b1)
        g2 = grad * (a1 @ b1)  # d/d(a2 @ b2)
        return g1 @ b1.T, a1.T @ g1, g2 @ b2.T, a2.T @ g2, None


class LoHaModule(DeltaWeightModule):
    def __init__(
        self,
        lora_name: str,
        org_module: nn.Linear,
        multiplier: float = 1.0,
        lora_dim: int = 4,
        alpha: float | None = 1.0,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(
            lora_name, org_module, lora_dim, alpha, multiplier, rank_dropout, module_dropout, device
        )
        out_dim, in_dim = self.out_features, self.in_features
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, lora_dim, device=device))
        self.hada_w1_b = nn.Parameter(torch.empty(lora_dim, in_dim, device=device))
        self.hada_w2_a = nn.Parameter(torch.empty(out_dim, lora_dim, device=device))
        self.hada_w2_b = nn.Parameter(torch.empty(lora_dim, in_dim, device=device))
        if device.type != "meta":  # musubi-tuner's init: w2_a = 0 makes ΔW = 0
            nn.init.normal_(self.hada_w1_a, std=0.1)
            nn.init.normal_(self.hada_w1_b, std=1.0)
            nn.init.zeros_(self.hada_w2_a)
            nn.init.normal_(self.hada_w2_b, std=1.0)

    def norm_factors(self) -> list[torch.Tensor]:
        return [self.hada_w1_a, self.hada_w2_a]

    def diff_weight(self) -> torch.Tensor:
        result: torch.Tensor = HadamardWeight.apply(
            self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale
        )
        return result


class LoHaNetwork(AdapterNetwork):
    kind = "loha"
    network_module = "networks.loha"
    full_delta = True

    loras: list[LoHaModule]

    def make_module(
        self, lora_name: str, linear: nn.Linear, dim: int, alpha: float, device: torch.device
    ) -> LoHaModule:
        args = self.spec.args
        return LoHaModule(
            lora_name,
            linear,
            multiplier=self.spec.multiplier,
            lora_dim=dim,
            alpha=alpha,
            rank_dropout=args.rank_dropout,
            module_dropout=args.module_dropout,
            device=device,
        )


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
) -> LoHaNetwork:
    """Build (not apply) a LoHa network for `model`. `device` holds its weights (default CPU)."""
    spec = network_spec(
        multiplier,
        network_dim,
        network_alpha,
        neuron_dropout,
        network_args,
        REFUSED_ARGS,
        dropout_refused_by="networks.loha",
    )
    return LoHaNetwork(model, spec, target_block_classes, default_exclude_patterns, device=device)
