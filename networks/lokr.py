"""`--network_module networks.lokr`: LoKr (a Kronecker product, arXiv:2309.14859) on the Linears networks.lora
would wrap, with musubi-tuner's file layout:

    lora_unet_<name>.lokr_w1 (out_l, in_m)
    lora_unet_<name>.lokr_w2_a (out_k, dim)  .lokr_w2_b (dim, in_n)     when dim < max(out_k, in_n) / 2
    lora_unet_<name>.lokr_w2 (out_k, in_n)                              otherwise (alpha = dim: scale 1)
    lora_unet_<name>.alpha ()

ΔW = kron(w1, w2) * alpha / dim, with out = out_l * out_k and in = in_m * in_n split by `factorization`.
--network_args as networks.lora plus `factor` (musubi-tuner's: -1, the default, splits each side as evenly as
its divisors allow; N > 0 puts N on the small side where it divides). LoRA+ and --network_dropout are refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from .adapter_module import DeltaWeightModule
from .base import AdapterNetwork, network_spec
from .network_args import NetworkArgs

logger = logging.getLogger(__name__)

REFUSED_ARGS = {
    "loraplus_lr_ratio": "LoRA+ needs LoRA's up/down pair, and networks.lokr has none (musubi-tuner logs "
    "that it is not effective and trains without it); use networks.lora for LoRA+",
}


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(small, large) with small * large == dimension: `factor` itself where it divides, else the largest
    divisor up to sqrt(dimension) (and up to `factor` when it is > 0). 128 -> (8, 16); factor 4: (4, 32)."""
    if factor > 0 and dimension % factor == 0:
        other = dimension // factor
        return min(factor, other), max(factor, other)
    limit = math.isqrt(dimension) if factor < 0 else min(factor, math.isqrt(dimension))
    small = max(d for d in range(1, limit + 1) if dimension % d == 0)
    return small, dimension // small


class LoKrModule(DeltaWeightModule):
    def __init__(
        self,
        lora_name: str,
        org_module: nn.Linear,
        multiplier: float = 1.0,
        lora_dim: int = 4,
        alpha: float | None = 1.0,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        factor: int = -1,
        device: torch.device | str | None = None,
    ) -> None:
        device = torch.device("cpu") if device is None else torch.device(device)
        in_m, in_n = factorization(org_module.in_features, factor)
        out_l, out_k = factorization(org_module.out_features, factor)
        self.full_w2 = lora_dim >= max(out_k, in_n) / 2  # a rank this large saves nothing: w2 is one matrix
        if self.full_w2:
            alpha = lora_dim  # scale 1, as musubi-tuner
        super().__init__(
            lora_name, org_module, lora_dim, alpha, multiplier, rank_dropout, module_dropout, device
        )
        self.lokr_w1 = nn.Parameter(torch.empty(out_l, in_m, device=device))
        if self.full_w2:
            self.lokr_w2 = nn.Parameter(torch.empty(out_k, in_n, device=device))
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(out_k, lora_dim, device=device))
            self.lokr_w2_b = nn.Parameter(torch.empty(lora_dim, in_n, device=device))
        if device.type != "meta":  # musubi-tuner's init: w2 (or w2_b) = 0 makes ΔW = 0
            nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
            if self.full_w2:
                nn.init.zeros_(self.lokr_w2)
            else:
                nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
                nn.init.zeros_(self.lokr_w2_b)

    def norm_factors(self) -> list[torch.Tensor]:
        return [self.lokr_w1, self.lokr_w2 if self.full_w2 else self.lokr_w2_a]

    def diff_weight(self) -> torch.Tensor:
        w2 = self.lokr_w2 if self.full_w2 else self.lokr_w2_a @ self.lokr_w2_b
        return torch.kron(self.lokr_w1, w2) * self.scale


class LoKrNetwork(AdapterNetwork):
    kind = "lokr"
    network_module = "networks.lokr"
    full_delta = True

    loras: list[LoKrModule]

    def make_module(
        self, lora_name: str, linear: nn.Linear, dim: int, alpha: float, device: torch.device
    ) -> LoKrModule:
        args = self.spec.args
        return LoKrModule(
            lora_name,
            linear,
            multiplier=self.spec.multiplier,
            lora_dim=dim,
            alpha=alpha,
            rank_dropout=args.rank_dropout,
            module_dropout=args.module_dropout,
            factor=args.factor,
            device=device,
        )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        full = [lora for lora in self.loras if lora.full_w2]
        if full:  # one line for all of them: a 720p model at dim 64 would print dozens
            logger.warning(
                "LoKr: %d of %d modules (e.g. %s, %d x %d) have a dim too large for their factor %d split: their "
                "lokr_w2 is one full matrix and their alpha is their dim (scale 1), as in musubi-tuner",
                len(full),
                len(self.loras),
                full[0].lora_name,
                full[0].out_features,
                full[0].in_features,
                self.spec.args.factor,
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
) -> LoKrNetwork:
    """Build (not apply) a LoKr network for `model`. `device` holds its weights (default CPU)."""
    spec = network_spec(
        multiplier,
        network_dim,
        network_alpha,
        neuron_dropout,
        network_args,
        REFUSED_ARGS,
        dropout_refused_by="networks.lokr",
    )
    return LoKrNetwork(model, spec, target_block_classes, default_exclude_patterns, device=device)
