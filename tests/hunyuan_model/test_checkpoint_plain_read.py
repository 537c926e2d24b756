"""--disable_numpy_memmap: the DiT read with plain reads instead of memory-mapping the file (load_dit's
mmap=False): the same weights, no mapping of the file while they are in use, and a damaged file still one line."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

import hunyuan_model.checkpoint as checkpoint
from hunyuan_model.checkpoint import load_dit, read_state_dict
from hunyuan_model.errors import CheckpointError
from hunyuan_model.tiny import tiny_dit_state_dict


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def test_the_same_weights_without_memory_mapping(tiny_dit, monkeypatch):
    mapped = load_dit(tiny_dit).state_dict()

    def no_mapping(*args, **kwargs):
        raise AssertionError("safe_open memory-maps the file")

    monkeypatch.setattr(checkpoint, "safe_open", no_mapping)
    plain = load_dit(tiny_dit, mmap=False).state_dict()
    assert plain.keys() == mapped.keys()
    for key, value in mapped.items():
        assert plain[key].dtype == value.dtype and torch.equal(plain[key], value), key


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_a_pt_file_stays_mapped_only_without_the_flag(tmp_path):
    path = tmp_path / "dit.pt"
    torch.save(tiny_dit_state_dict(0), path)
    mapped = read_state_dict(path)
    assert _mapped(path)  # torch.load(mmap=True): the tensors live in the file's pages
    del mapped
    plain = read_state_dict(path, mmap=False)
    assert not _mapped(path)
    assert torch.equal(plain["img_in.proj.weight"], tiny_dit_state_dict(0)["img_in.proj.weight"])


def _with_header(tmp_path: Path, header: bytes, data: bytes) -> Path:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.mark.parametrize(
    ("header", "data"),
    [
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 8),  # truncated
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000000000000]}}', b"\0" * 16),
        (b'{"w": {"dtype": "XX", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16),
        (b'{"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}', b"\0" * 16),
        (b"not json", b""),
        (b"[1, 2]", b""),  # JSON, not a table
        (b'{"w": [0, 16]}', b"\0" * 16),
    ],
)
def test_a_damaged_file_is_one_line(tmp_path, header, data):
    path = _with_header(tmp_path, header, data)
    _one_line_error(path)


def test_a_header_length_past_the_end_is_one_line(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    _one_line_error(path)


def _one_line_error(path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path, mmap=False)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable safetensors file (") and "\n" not in message
