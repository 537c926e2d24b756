"""`LoRAModule`: a low-rank update added to one `nn.Linear`, in place.

The original Linear stays where it is in the model (its state-dict keys and module name do not change);
only its `forward` is replaced. The hot path does no full-size arithmetic of its own: the scalars
(multiplier x alpha / dim) ride on `addmm`'s `alpha`, and the update is accumulated into the base output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_module import LinearAdapter


def _bare_linear(in_features: int, out_features: int, device: torch.device) -> nn.Linear:
    """A bias-free nn.Linear with uninitialised weight, without nn.Linear's init (we overwrite it at once).

    nn.Linear's constructor (random init, or meta + to_empty) costs more than the tensors themselves when a
    network builds 480 of them: this is most of the creation time on the 720p model.
    """
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = in_features, out_features
    linear.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
    linear.register_parameter("bias", None)
    return linear


class LoRAModule(LinearAdapter):
    def __init__(
        self,
        lora_name: str,
        org_module: nn.Linear,
        multiplier: float = 1.0,
        lora_dim: int = 4,
        alpha: float | None = 1.0,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        device = torch.device("cpu") if device is None else torch.device(device)
        super().__init__(lora_name, org_module, lora_dim, alpha, multiplier, device)
        self.lora_down = _bare_linear(self.in_features, lora_dim, device)
        self.lora_up = _bare_linear(lora_dim, self.out_features, device)
        if device.type != "meta":  # meta (listing targets) has no values to set
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_up.weight)  # so the model is unchanged before training
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self._inplace = False

    def apply_to(self) -> None:
        super().apply_to()
        # Accumulating in place into the base output is safe when it comes from nn.Linear's own forward,
        # whose backward does not need its output. Any other forward (fp8 patches, a LoRA already applied
        # to this Linear, ...) gets a fresh sum.
        self._inplace = type(self.org_module).forward is nn.Linear.forward and not self._patched_before

    def _rank_mask(self, lx: torch.Tensor, lead: torch.Size, p: float) -> tuple[torch.Tensor, float]:
        """Drop whole ranks per sample (first dim) with probability `p`, as musubi-tuner does; rescale to keep
        the expectation."""
        mask = torch.rand((lead[0] if lead else 1, self.lora_dim), device=lx.device) > p
        mask = mask.view(mask.shape[0], *([1] * (len(lead) - 1)), self.lora_dim).to(lx.dtype)
        lx = (lx.view(*lead, self.lora_dim) * mask).view(-1, self.lora_dim)
        return lx, 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)  # a view when x is contiguous; the base Linear folds the same
        out = self.base_forward()(x2d)
        if self.multiplier == 0 or (
            self.training and self.module_dropout and torch.rand(()) < self.module_dropout
        ):
            return out.reshape(*lead, self.out_features)

        lx = F.linear(x2d, self.lora_down.weight.to(x2d.dtype))  # (tokens, rank): small
        scale = self.multiplier * self.scale
        if self.training and self.dropout:
            lx = F.dropout(lx, p=self.dropout)
        if self.training and self.rank_dropout:
            lx, rescale = self._rank_mask(lx, lead, self.rank_dropout)
            scale *= rescale
        # out += scale * lx @ up^T, written into `out` itself: no full-size temporary, forward or backward.
        up_t = self.lora_up.weight.to(out.dtype).t()
        lx = lx.to(out.dtype)
        out = out.addmm_(lx, up_t, alpha=scale) if self._inplace else torch.addmm(out, lx, up_t, alpha=scale)
        return out.view(*lead, self.out_features)
