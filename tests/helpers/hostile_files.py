"""The hostile-input corpus and checks shared by tests/e2e/test_hostile_*.py: safetensors with lying headers
and torn files, bad LoRA and DiT files (built in a folder the caller gives: no binary files in git), and the
`error:` line check.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from hunyuan_model.tiny import tiny_dit_state_dict

LORA_KEY = "lora_unet_double_blocks_0_img_attn_proj"
ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")


def refused(capsys, code: int, *fragments: str, logs: bool = False) -> str:
    """Exit 2 and exactly one stderr line, `error: ...`, holding every fragment; nothing on stdout.

    logs: the command logs its progress (log lines, progress bars) before it meets the bad input; then only the
    `error:` lines are counted.
    """
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    if logs:
        lines = [line for line in lines if line.startswith("error:")]
    assert code == 2, err
    assert out == "" and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: ") and len(lines[0]) < 1000, lines[0][:300]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---------------------------------------------------------------- safetensors with lying headers, torn files


def raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def tensor_header(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def broken_safetensors(folder: Path, name: str = "w") -> dict[str, tuple[Path, str]]:
    """case -> (a file that no safetensors reader may accept, a fragment of the error)."""
    folder.mkdir(parents=True, exist_ok=True)
    f32 = tensor_header("F32", [2], 0, 8)
    cases = {
        "header longer than the file": (
            raw_safetensors(folder / "long.safetensors", {name: f32}, b"\0" * 8, 10**6),
            "invalid header length",
        ),
        "header length 2**63": (
            raw_safetensors(folder / "huge.safetensors", {}, b"", 2**63),
            "header too large",
        ),
        "offsets past the end": (
            raw_safetensors(folder / "past.safetensors", {name: f32}, b"\0" * 4),
            "not fully covered",
        ),
        "overlapping offsets": (
            raw_safetensors(
                folder / "overlap.safetensors", {name: f32, "x": tensor_header("F32", [2], 4, 12)}, b"\0" * 12
            ),
            "invalid offset",
        ),
        "unknown dtype": (
            raw_safetensors(folder / "dtype.safetensors", {name: tensor_header("F33", [2], 0, 8)}, b"\0" * 8),
            "F33",
        ),
        "shape vs byte range": (
            raw_safetensors(folder / "shape.safetensors", {name: tensor_header("F32", [3], 0, 8)}, b"\0" * 8),
            "invalid shape",
        ),
        "2**80 elements": (
            raw_safetensors(
                folder / "big.safetensors", {name: tensor_header("F32", [2**40, 2**40], 0, 8)}, b"\0" * 8
            ),
            "overflow",
        ),
        "header is a list": (raw_safetensors(folder / "list.safetensors", [1, 2]), "invalid JSON"),
        "zero bytes": ((folder / "zero.safetensors"), "header too small"),
        "truncated": ((folder / "torn.safetensors"), "safetensors"),
    }
    (folder / "zero.safetensors").write_bytes(b"")
    good = folder / "good.safetensors"
    save_file({name: torch.ones(64, 64)}, str(good))
    (folder / "torn.safetensors").write_bytes(good.read_bytes()[:-100])
    return cases


# ---------------------------------------------------------------- LoRA files


def lora_file(path: Path, **over: torch.Tensor) -> Path:
    sd = {
        f"{LORA_KEY}.lora_down.weight": torch.randn(4, 64) * 0.01,
        f"{LORA_KEY}.lora_up.weight": torch.randn(64, 4) * 0.01,
        f"{LORA_KEY}.alpha": torch.tensor(2.0),
    }
    sd.update({f"{LORA_KEY}.{k.replace('__', '.')}": v for k, v in over.items()})
    save_file(sd, str(path))
    return path


def bad_loras(folder: Path) -> dict[str, tuple[Path, str]]:
    """case -> (a bad LoRA file for the tiny DiT, a fragment of the error)."""
    cases = {name: (path, "cannot read LoRA file") for name, (path, _) in broken_safetensors(folder).items()}
    cases["a directory"] = (folder / "dir.safetensors", "is a directory")
    (folder / "dir.safetensors").mkdir()
    cases["missing"] = (folder / "nope.safetensors", "not found")
    cases["int weights"] = (
        lora_file(folder / "int.safetensors", lora_down__weight=torch.ones(4, 64, dtype=torch.int32)),
        f"{LORA_KEY}.lora_down.weight is torch.int32",
    )
    cases["NaN weights"] = (
        lora_file(folder / "nan.safetensors", lora_up__weight=torch.full((64, 4), float("nan"))),
        f"{LORA_KEY}.lora_up.weight holds NaN or Inf",
    )
    cases["Inf alpha"] = (
        lora_file(folder / "inf.safetensors", alpha=torch.tensor(float("inf"))),
        f"{LORA_KEY}.alpha holds NaN or Inf",
    )
    cases["alpha not one number"] = (
        lora_file(folder / "alpha3.safetensors", alpha=torch.ones(3)),
        "must be one number",
    )
    cases["rank 0"] = (
        lora_file(
            folder / "rank0.safetensors",
            lora_down__weight=torch.zeros(0, 64),
            lora_up__weight=torch.zeros(64, 0),
        ),
        "is empty",
    )
    for name, config in {
        "regex bomb in alpha_pattern": {"alpha_pattern": {"(.*)*x": 4}},
        "runaway alpha_pattern": {"alpha_pattern": {"(.|.)*Z": 4}},
        "invalid regex in alpha_pattern": {"alpha_pattern": {"(": 4}},
        "text lora_alpha": {"lora_alpha": "abc"},
        "NaN lora_alpha": {"lora_alpha": float("nan")},
    }.items():
        path = folder / f"{name.replace(' ', '_')}.safetensors"
        diffusers_lora(path, {"lora_adapter_metadata": json.dumps(config)})
        cases[f"PEFT header: {name}"] = (path, "in the header")
    return cases


def diffusers_lora(path: Path, metadata: dict[str, str]) -> Path:
    """A diffusers-layout LoRA (single block 1's attn.to_q) with a saved PEFT LoraConfig in the header."""
    prefix = "transformer.single_transformer_blocks.1.attn.to_q"
    sd = {f"{prefix}.lora_A.weight": torch.randn(2, 64), f"{prefix}.lora_B.weight": torch.randn(64, 2)}
    save_file(sd, str(path), metadata=metadata)
    return path


# ---------------------------------------------------------------- DiT files


class Payload:
    """Unpickled with weights_only=False, this would run `touch marker`."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def bad_dits(folder: Path) -> dict[str, tuple[Path, str]]:
    cases = {
        name: (path, "not a readable safetensors file")
        for name, (path, _) in broken_safetensors(folder).items()
    }
    Payload.marker = folder / "pwned"
    torch.save({"module": {"img_in.proj.weight": Payload()}}, folder / "payload.pt")
    cases["pickle payload (.pt)"] = (folder / "payload.pt", "refusing to load")
    (folder / "plain_pickle.pt").write_bytes(__import__("pickle").dumps({"w": Payload()}, protocol=4))
    cases["plain pickle (.pt)"] = (folder / "plain_pickle.pt", "weights-only unpickler refused it")
    (folder / "zero.pt").write_bytes(b"")
    cases["zero-byte .pt"] = (folder / "zero.pt", "empty file")
    (folder / "junk.pt").write_bytes(bytes(range(256)) * 8)
    cases["junk .pt"] = (folder / "junk.pt", "not a readable PyTorch checkpoint")
    (folder / "dit_dir.safetensors").mkdir()
    cases["empty directory"] = (folder / "dit_dir.safetensors", "folder holds no .safetensors file")
    sd = tiny_dit_state_dict()
    save_file(
        {**sd, "img_in.proj.weight": sd["img_in.proj.weight"].to(torch.int32)},
        str(folder / "int.safetensors"),
    )
    cases["int weights"] = (folder / "int.safetensors", "'img_in.proj.weight': torch.int32")
    nan = sd["double_blocks.0.img_attn_proj.weight"].clone()
    nan[0, 0] = float("nan")
    save_file({**sd, "double_blocks.0.img_attn_proj.weight": nan}, str(folder / "nan.safetensors"))
    cases["NaN weight"] = (
        folder / "nan.safetensors",
        "'double_blocks.0.img_attn_proj.weight' holds NaN or Inf",
    )
    return cases
