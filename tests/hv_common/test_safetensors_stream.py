"""hv_common/safetensors_stream.py: what the streaming writer writes, safetensors reads back."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hv_common.safetensors_stream import write_safetensors_streaming


def test_streaming_writer_is_read_back_by_safetensors(tmp_path):
    tensors = {
        "b": torch.randn(3, 5).to(torch.bfloat16),
        "a": torch.arange(7, dtype=torch.int64),
        "c": torch.tensor([True, False, True]),
        "s": torch.tensor(2.5),
        "h": torch.randn(2, 2, 3).half(),
    }
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in sorted(tensors.items())]
    path = write_safetensors_streaming(tmp_path / "x.safetensors", specs, tensors.__getitem__, {"k": "v"})
    back = load_file(path)
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    assert safe_open(str(path), "pt").metadata() == {"k": "v"}
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    for name, tensor in tensors.items():  # every tensor starts at a multiple of its element size
        assert header[name]["data_offsets"][0] % tensor.element_size() == 0, name
