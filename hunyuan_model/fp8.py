"""fp8 storage for the DiT's block Linears (`--fp8_base`, `--fp8_scaled`): weights in float8_e4m3fn, math in bf16.

Which weights: the 2-D `weight` of every nn.Linear inside `double_blocks.*` / `single_blocks.*` except the
modulation Linears (`img_mod.linear`, `txt_mod.linear`, `modulation.linear`), whose outputs scale everything
after them. Biases, norms, embeddings, the final layer and the token refiner stay in the compute dtype.

A converted Linear keeps its name, its `weight` key and `isinstance(m, nn.Linear)`: only its class becomes
`Fp8Linear` (a `__class__` swap), which upcasts the weight per call. `--fp8_scaled` adds a float32 buffer
`scale_weight` beside the weight (per output row, shape (out, 1); ComfyUI's scaled files hold a scalar, also
accepted): the stored weight is `weight / scale`, so each row uses the whole fp8 range. Weight and scale are
an ordinary Parameter and buffer, so moving a block between devices (block swap) moves them as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
FLOAT8_DTYPES = frozenset(
    {torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz}
)
# What a float8 tensor becomes when it is not kept in fp8 and no dtype is asked for (loading, merging).
DENSE_DTYPE = torch.bfloat16
SCALE_KEY = "scale_weight"
# Activation scales of files made for fp8 matmuls (ComfyUI's `scale_input`): we compute in bf16, so they are
# read past, not used.
INPUT_SCALE_KEYS = ("scale_input", "input_scale")
# ComfyUI's scaled-fp8 files carry this empty marker tensor at the top level; it is no weight.
COMFY_MARKER_KEYS = frozenset({"scaled_fp8"})

_BLOCK_LINEAR = re.compile(r"(double_blocks|single_blocks)\.\d+\..+")
_MODULATION = re.compile(r".*(_mod|modulation)\.linear")


class Fp8Linear(nn.Linear):
    """An nn.Linear whose weight is stored in float8; it computes in the input's (or autocast's) dtype."""

    scale_weight: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):  # upcast once, straight to the dtype autocast uses
            dtype = torch.get_autocast_dtype(x.device.type)
        weight = self.weight.to(dtype)
        if self.scale_weight is not None:
            weight = weight * self.scale_weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), weight, bias)


def is_fp8_target(module_name: str) -> bool:
    """Whether the Linear named `module_name` (a qualified module name) keeps its weight in fp8."""
    return bool(_BLOCK_LINEAR.fullmatch(module_name)) and not _MODULATION.fullmatch(module_name)


def is_fp8_weight(key: str, shape: Sequence[int]) -> bool:
    """The same rule on a state dict (the memory estimate reads shapes, not modules): a 2-D `weight` of a
    target Linear. Within the blocks every 2-D weight is a Linear's (norms are 1-D)."""
    module_name, _, leaf = key.rpartition(".")
    return leaf == "weight" and len(shape) == 2 and is_fp8_target(module_name)


def fp8_target_names(model: nn.Module) -> list[str]:
    """Qualified names of the Linears whose weights become fp8, in model order (works on the meta device)."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and is_fp8_weight(f"{n}.weight", m.weight.shape)
    ]


def dense_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor stored as `dtype` is held in when it is not kept in fp8: float8 -> DENSE_DTYPE."""
    return DENSE_DTYPE if dtype in FLOAT8_DTYPES else dtype


def quantize_weight(weight: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 2-D weight as float8_e4m3fn, and with `scaled` its float32 per-row scale (out, 1) (else None).

    Values beyond the fp8 range are clamped to +-448 (a cast alone saturates on some devices only). With
    `scaled`, row r is stored as `weight[r] / scale[r]`, scale = amax(|row|) / 448, divided in float32.
    """
    w = weight.detach()
    if not scaled:
        # bf16/fp16/fp32 hold 448 exactly: clamp in place of an upcast (2-3x faster on a CPU, same result)
        w = w if w.dtype in (torch.bfloat16, torch.float16, torch.float32) else w.float()
        return w.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), None  # not clamp_: w is the caller's tensor
    amax = w.abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # an all-zero row keeps scale 1
    return (w.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The weight in `dtype`, with its scale (scalar or per row) applied; computed in float32."""
    w = weight.float()
    if scale is not None:
        w = w * scale.float()
    return w.to(dtype)


def normalize_scale(scale: torch.Tensor, out_features: int) -> torch.Tensor | None:
    """A file's `scale_weight` as a float32 scalar () or per-row (out, 1) tensor; None if its shape fits neither."""
    if scale.numel() == 1:
        return scale.reshape(()).float()
    if scale.numel() == out_features and scale.dim() <= 2 and scale.shape[0] == out_features:
        return scale.reshape(out_features, 1).float()
    return None


def make_fp8(linear: nn.Linear, scale: torch.Tensor | None) -> None:
    """Turn `linear` into an Fp8Linear in place (its weight must already be, or be assigned, float8)."""
    linear.__class__ = Fp8Linear
    linear.register_buffer(SCALE_KEY, scale)


def quantize_linears(model: nn.Module, scaled: bool) -> int:
    """Convert a loaded model's target Linears (see `is_fp8_target`) to fp8 in place; returns how many.

    Weights are quantized on the device they live on; they stop requiring gradients (the base is frozen).
    """
    count = 0
    for name in fp8_target_names(model):
        linear = cast(nn.Linear, model.get_submodule(name))
        if linear.weight.dtype == FP8_DTYPE:
            continue  # already fp8 (loaded so)
        q, scale = quantize_weight(linear.weight, scaled)
        linear.weight = nn.Parameter(q, requires_grad=False)
        make_fp8(linear, scale)
        count += 1
    return count


def quantize_every_linear(model: nn.Module) -> int:
    """`--fp8_llm`: every nn.Linear weight of a text encoder in float8_e4m3fn (unscaled, as musubi-tuner casts
    its LLM), computed in the input's dtype by Fp8Linear; norms and embeddings keep theirs. Returns how many."""
    count = 0
    for linear in [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.dtype != FP8_DTYPE]:
        q, _ = quantize_weight(linear.weight, scaled=False)
        linear.weight = nn.Parameter(q, requires_grad=False)
        make_fp8(linear, None)
        count += 1
    return count


def load_tensor(
    value: torch.Tensor, scale: torch.Tensor | None, target: bool, scaled: bool, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One floating tensor of a DiT file as the model will hold it, and its scale (None unless kept).

    target: the weight of an fp8 Linear (only when --fp8_base / --fp8_scaled): float8_e4m3fn weights are kept
    as the file has them (with the file's scale, if any); others are quantized (per-row scale if `scaled`).
    Anything else is held in `dtype` (None: the file's dtype, but float8 becomes bfloat16), its scale applied.
    """
    if target:
        if value.dtype == FP8_DTYPE:
            return value, scale
        if scale is not None or value.dtype in FLOAT8_DTYPES:
            value = dequantize(value, scale, torch.float32)
        return quantize_weight(value, scaled)
    if value.dtype in FLOAT8_DTYPES or scale is not None:
        high = dtype or dense_dtype(value.dtype)
        return dequantize(value, scale, high), None
    return (value if dtype is None else value.to(dtype)), None


# The lowest magnitude code (sign bit off) from which float8 values are NaN/Inf: e4m3fn has only NaN
# (S.1111.111), e5m2 Inf and NaN (exponent all ones, S.11111.xx). The *fnuz kinds have one NaN code, 0x80.
_FIRST_NONFINITE_CODE = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C}


def _float8_finite(t: torch.Tensor) -> torch.Tensor:
    """float8 has no isfinite: read the codes. Two max reductions over the bytes (no full-size temporary):
    as int8 the positive codes from `code` up are the largest, as uint8 the negative ones."""
    bits = t.view(torch.uint8)
    code = _FIRST_NONFINITE_CODE.get(t.dtype)
    if code is None:
        return (bits != 0x80).all()
    return (bits.view(torch.int8).amax() < code) & (bits.amax() < 0x80 + code)


def finite_flag(t: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool on t's device, without a sync: False if t holds NaN or Inf. One reduction (a sum, many
    times cheaper than isfinite on a CPU), so for non-float8 tensors it is also False when the sum overflows
    (values near 1e38): confirm a False with `all_finite`."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    if t.dtype in FLOAT8_DTYPES:
        return _float8_finite(t)
    return torch.isfinite(t.sum())


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """The exact check, as a 0-dim bool on t's device: no NaN/Inf in t."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    if t.dtype in FLOAT8_DTYPES:
        return _float8_finite(t)
    return torch.isfinite(t).all()
