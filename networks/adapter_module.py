"""What every trainable adapter of one `nn.Linear` shares (LoRA, LoHa, LoKr): the wrapped Linear kept outside
the state dict, the in-place forward patch and its undoing, the saved `alpha` and the scale it gives.

`DeltaWeightModule` is the forward of the adapters that build a whole weight update ΔW (LoHa, LoKr), with
musubi-tuner's dropouts: module dropout skips the adapter, rank dropout drops rows of ΔW (output features).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class LinearAdapter(nn.Module):
    alpha: torch.Tensor  # a buffer: saved in the file, read back by load_state_dict

    def __init__(
        self,
        lora_name: str,
        org_module: nn.Linear,
        lora_dim: int,
        alpha: float | None,
        multiplier: float,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.lora_name = lora_name
        self.lora_dim = lora_dim
        self.in_features, self.out_features = org_module.in_features, org_module.out_features
        alpha = float(lora_dim) if alpha is None or alpha == 0 else float(alpha)
        # On meta (listing targets) alpha stays readable on the CPU: it is one number, and it is reported.
        self.register_buffer("alpha", torch.tensor(alpha, device="cpu" if device.type == "meta" else device))
        self.scale = alpha / lora_dim
        self.multiplier = multiplier
        # A list, not an attribute: the base Linear must not become a submodule of the adapter (state dict!).
        self._org: list[nn.Linear] = [org_module]
        self._org_forward: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._patched_before = False
        self.register_load_state_dict_post_hook(LinearAdapter._refresh_scale)

    @staticmethod
    def _refresh_scale(module: LinearAdapter, incompatible_keys) -> None:
        if not module.alpha.is_meta:
            module.scale = float(module.alpha) / module.lora_dim

    @property
    def org_module(self) -> nn.Linear:
        return self._org[0]

    def apply_to(self) -> None:
        if self._org_forward is not None:
            raise RuntimeError(f"adapter {self.lora_name} is already applied")
        org = self.org_module
        self._patched_before = "forward" in vars(org)  # fp8 patches, another adapter on this Linear, ...
        self._org_forward = org.forward
        vars(org)["forward"] = self.forward  # an instance attribute, over the class's forward (restore: del)

    def restore(self) -> None:
        """Give the base Linear the forward it had before `apply_to` (restore stacked adapters last-first)."""
        if self._org_forward is None:
            return
        if self._patched_before:
            vars(self.org_module)["forward"] = self._org_forward
        else:
            del self.org_module.forward  # the instance attribute; the class's forward shows again
        self._org_forward = None

    def base_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._org_forward is None:
            raise RuntimeError(f"adapter {self.lora_name} is not applied (apply_to): no base forward to call")
        return self._org_forward

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


class DeltaWeightModule(LinearAdapter):
    """An adapter whose update is a whole (out, in) matrix ΔW built from its factors (`diff_weight`)."""

    def __init__(
        self,
        lora_name: str,
        org_module: nn.Linear,
        lora_dim: int,
        alpha: float | None,
        multiplier: float,
        rank_dropout: float | None,
        module_dropout: float | None,
        device: torch.device,
    ) -> None:
        super().__init__(lora_name, org_module, lora_dim, alpha, multiplier, device)
        self.rank_dropout, self.module_dropout = rank_dropout, module_dropout

    def diff_weight(self) -> torch.Tensor:
        """ΔW with the alpha/dim scale, (out, in), in the factors' dtype."""
        raise NotImplementedError

    def norm_factors(self) -> list[torch.Tensor]:
        """Two factors whose product ΔW is linear in each: scaling both by sqrt(r) scales ΔW by r."""
        raise NotImplementedError

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[bool, float]:
        """--scale_weight_norms for one module, as musubi-tuner does it for LoRA: scale ΔW down to a Frobenius
        norm of `max_norm` (scaling two factors by the square root); (scaled?, the norm after)."""
        norm = float(self.diff_weight().float().norm())
        if norm <= max_norm:
            return False, norm
        root = (max_norm / norm) ** 0.5
        for factor in self.norm_factors():
            factor.mul_(root)
        return True, max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward()(x)
        if self.multiplier == 0 or (
            self.training and self.module_dropout and torch.rand(()) < self.module_dropout
        ):
            return out
        diff = self.diff_weight()
        scale = self.multiplier
        if self.training and self.rank_dropout:
            keep = torch.rand(diff.shape[0], 1, device=diff.device) > self.rank_dropout
            diff = diff * keep.to(diff.dtype)
            scale /= 1.0 - self.rank_dropout
        delta = F.linear(x, diff.to(x.dtype))
        return out + (delta * scale).to(out.dtype)
