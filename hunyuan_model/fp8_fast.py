"""`hv_generate_video.py --fp8_fast`: the fp8 block Linears (`--fp8`, hunyuan_model/fp8.py) multiply in fp8 with
`torch._scaled_mm` instead of upcasting their weight: the input is quantized per tensor to float8_e4m3fn and the
matmul runs on the GPU's fp8 units (compute capability 8.9 or newer); a per-row weight scale is applied to the
output. Inference only, as in musubi-tuner.
"""

from __future__ import annotations

import torch
from torch import nn

from hv_common.errors import UserError

from .fp8 import FP8_DTYPE, FP8_MAX, Fp8Linear

MIN_CAPABILITY = (8, 9)  # Ada (RTX 40xx, L4) and Hopper: the first with fp8 tensor cores


def check_fp8_fast(device: torch.device) -> None:
    """One line when this device has no fp8 matmuls: before any model loads."""
    if device.type != "cuda":
        raise UserError(
            f"--fp8_fast needs a CUDA GPU with fp8 matmuls (compute capability 8.9 or newer: RTX 40xx, L4, "
            f"H100); this run's device is {device.type}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise UserError(
            f"--fp8_fast needs a CUDA GPU with fp8 matmuls (compute capability 8.9 or newer); "
            f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}"
        )


class Fp8FastLinear(Fp8Linear):
    """An Fp8Linear that multiplies in fp8 (torch._scaled_mm); shapes _scaled_mm cannot take fall back to the
    upcast of Fp8Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dtype != FP8_DTYPE or self.in_features % 16 or self.out_features % 16:
            return super().forward(x)
        dtype = x.dtype
        flat = x.reshape(-1, self.in_features)
        scale = (flat.abs().amax().float() / FP8_MAX).clamp(min=1e-12)
        quantized = (flat / scale.to(dtype)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        one = torch.ones((), dtype=torch.float32, device=x.device)
        out = torch._scaled_mm(quantized, self.weight.t(), scale_a=scale, scale_b=one, out_dtype=dtype)
        if self.scale_weight is not None:
            out = out * self.scale_weight.reshape(1, -1).to(dtype)  # per row (or one scalar)
        if self.bias is not None:
            out = out + self.bias.to(dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def enable_fp8_fast(model: nn.Module) -> int:
    """Every Fp8Linear of `model` multiplies in fp8 from now on; returns how many (0: the DiT is not fp8)."""
    count = 0
    for module in model.modules():
        if type(module) is Fp8Linear:
            module.__class__ = Fp8FastLinear
            count += 1
    return count
