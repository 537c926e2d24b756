"""The one dtype table (hv_common/dtypes.py) agrees with torch and with the safetensors files torch writes, and
the option parsers, the memory estimate and the safetensors readers and writer use it (tests/repo/test_one_copy.py
checks that no second table is written)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from dataset import cache_files, cache_format
from hunyuan_model import checkpoint
from hv_common import devices, option_types, safetensors_stream
from hv_common.dtypes import OPTION_BYTES, OPTION_NAMES, TABLE, option_dtypes, torch_dtype
from memory import estimate


def _header_dtype(path) -> str:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))["t"]["dtype"]


@pytest.mark.parametrize("entry", TABLE, ids=lambda d: d.torch_name)
def test_each_row_is_what_torch_and_safetensors_say(entry, tmp_path):
    dtype = torch_dtype(entry.torch_name)
    assert str(dtype) == f"torch.{entry.torch_name}" and dtype.itemsize == entry.itemsize
    save_file({"t": torch.zeros(2, dtype=dtype)}, str(tmp_path / "t.safetensors"))
    assert _header_dtype(tmp_path / "t.safetensors") == entry.safetensors
    assert entry.is_float8 == (dtype in checkpoint.FLOAT8_DTYPES)


def test_the_option_names_keep_their_order_and_meaning():
    # the order error messages list them in ("expected one of float32, fp32, ...")
    assert OPTION_NAMES == ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16")
    assert option_dtypes() == {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    sizes = {name: dtype.itemsize for name, dtype in option_dtypes().items()}
    assert sizes == OPTION_BYTES


def test_every_user_reads_the_one_table():
    assert option_types.DTYPE_NAMES is OPTION_NAMES and estimate.DTYPE_BYTES is OPTION_BYTES
    assert option_dtypes() == devices.DTYPES
    codes = {d.safetensors: torch_dtype(d.torch_name) for d in TABLE}
    written = {dtype: code for code, dtype in codes.items()}
    named = {code: str(dtype).removeprefix("torch.") for code, dtype in codes.items()}
    dense = {c: d for c, d in codes.items() if d not in checkpoint.FLOAT8_DTYPES}
    assert codes == checkpoint.SAFETENSORS_DTYPES and written == safetensors_stream.DTYPE_NAMES
    assert named == cache_format.DTYPE_NAMES
    assert dense == cache_files._TORCH_DTYPES  # caches hold no float8: such a tensor is a corrupt file
    assert cache_format.FLOAT_NAMES == ("float32", "float16", "bfloat16")


def test_a_bad_dtype_is_one_line_naming_the_choices():
    expected = r"unknown dtype 'fp64'; expected one of float32, fp32, .*, bf16$"
    with pytest.raises(devices.UserError, match=expected):
        devices.parse_dtype("fp64", torch.float32)
    assert devices.parse_dtype("BF16", torch.float32) is torch.bfloat16
