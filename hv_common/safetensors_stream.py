"""Write a safetensors file one tensor at a time: the header first (it only needs shapes and dtypes), then
each tensor's bytes as it is produced. `safetensors.torch.save_file` needs every tensor in memory at once,
and copies each into a bytes object on top: twice a 25 GB model. Written atomically (hv_common.atomic).

The format: an 8-byte little-endian header length, the JSON header (padded with spaces to 8 bytes), then
the tensors' bytes, back to back. Like safetensors' own writer, the largest elements come first, so every
tensor starts at a multiple of its element size (readers that map the file need that).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from .atomic import atomic_path
from .dtypes import torch_to_safetensors

DTYPE_NAMES = torch_to_safetensors()  # torch dtype -> the header's code (hv_common/dtypes.py)

TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]


def _header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in specs:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)


def write_safetensors_streaming(
    path: str | Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """specs: (name, dtype, shape) of every tensor; produce(name) is called once per tensor, in file order."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors is little-endian; this writer does not byte-swap")
    specs = sorted(specs, key=lambda s: (-s[1].itemsize, s[0]))
    blob = _header(specs, metadata)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, dtype, shape in specs:
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(
                    f"{name}: produced {tensor.dtype} {tuple(tensor.shape)}, declared {dtype} {shape}"
                )
            # the raw bytes, through numpy's buffer: no second copy of the tensor
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(raw)  # type: ignore[arg-type]  # numpy's stubs declare __buffer__ only for Python >= 3.12
    return path
