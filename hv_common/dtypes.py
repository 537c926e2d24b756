"""The one dtype table: torch's name, the safetensors code, bytes per element, and the option names that choose
it. Every other dtype mapping (option parsing, the memory estimate, safetensors headers read and written,
musubi-tuner's cache keys) is derived from it.

The table is text, so that option parsing imports no torch (a bad option answers before torch loads); the
torch dtypes are looked up by name the first time they are asked for.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch


class Dtype(NamedTuple):
    torch_name: str  # torch.<torch_name>; also the suffix musubi-tuner's cache keys carry (dtype_to_str)
    safetensors: str  # a safetensors header's "dtype"
    itemsize: int  # bytes per element
    options: tuple[str, ...] = ()  # what --dit_dtype, --vae_dtype, --save_precision, ... accept

    @property
    def is_float8(self) -> bool:
        return self.torch_name.startswith("float8")


TABLE: tuple[Dtype, ...] = (
    Dtype("float64", "F64", 8),
    Dtype("float32", "F32", 4, ("float32", "fp32")),
    Dtype("float16", "F16", 2, ("float16", "fp16")),
    Dtype("bfloat16", "BF16", 2, ("bfloat16", "bf16")),
    Dtype("float8_e4m3fn", "F8_E4M3", 1),
    Dtype("float8_e5m2", "F8_E5M2", 1),
    Dtype("int64", "I64", 8),
    Dtype("int32", "I32", 4),
    Dtype("int16", "I16", 2),
    Dtype("int8", "I8", 1),
    Dtype("uint8", "U8", 1),
    Dtype("bool", "BOOL", 1),
)

# The option names in the order error messages list them: float32, fp32, float16, fp16, bfloat16, bf16.
OPTION_NAMES: tuple[str, ...] = tuple(name for d in TABLE for name in d.options)
# The dtypes the options choose, by torch's name: float32, float16, bfloat16.
OPTION_TORCH_NAMES: tuple[str, ...] = tuple(d.torch_name for d in TABLE if d.options)
OPTION_BYTES: dict[str, int] = {name: d.itemsize for d in TABLE for name in d.options}
TORCH_NAMES: dict[str, str] = {d.safetensors: d.torch_name for d in TABLE}  # safetensors code -> torch's name


def torch_dtype(torch_name: str) -> torch.dtype:
    import torch

    return getattr(torch, torch_name)


@cache
def option_dtypes() -> dict[str, torch.dtype]:
    """Option name -> torch dtype, in OPTION_NAMES's order."""
    return {name: torch_dtype(d.torch_name) for d in TABLE for name in d.options}


@cache
def safetensors_to_torch(float8: bool = True) -> dict[str, torch.dtype]:
    """safetensors code -> torch dtype; without the float8 codes if `float8` is False."""
    return {d.safetensors: torch_dtype(d.torch_name) for d in TABLE if float8 or not d.is_float8}


@cache
def torch_to_safetensors() -> dict[torch.dtype, str]:
    return {torch_dtype(d.torch_name): d.safetensors for d in TABLE}
