"""Device and dtype choices shared by the commands."""

from __future__ import annotations

from typing import overload

import torch

from hv_common.dtypes import option_dtypes
from hv_common.errors import UserError

DTYPES = option_dtypes()  # option name -> torch dtype (hv_common/dtypes.py)


@overload
def parse_dtype(name: str | None, default: torch.dtype) -> torch.dtype: ...
@overload
def parse_dtype(name: str | None, default: None) -> torch.dtype | None: ...


def parse_dtype(name: str | None, default: torch.dtype | None) -> torch.dtype | None:
    """The dtype an option names (float32, fp32, ..., any case); `default` when it is not given."""
    if name is None:
        return default
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available on this machine")
    return device
