"""Reading a LoRA file of any layout into our common form, and checking that it fits a DiT."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from networks.lora_file import LoRAFileError, check_lora_tensors

from .errors import UserError
from .lora_layouts import LoRAWeights, read_layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedLoRA:
    path: str
    weights: LoRAWeights  # by our module name
    layout: str  # the layout the file was in
    metadata: dict[str, str]


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a LoRA file, or a one-line LoRAFileError."""
    path = Path(path)
    if path.is_dir():
        raise LoRAFileError(f"LoRA file {path}: is a directory, not a .safetensors file")
    if not path.is_file():
        raise LoRAFileError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise LoRAFileError(
            f"cannot read LoRA file {path}: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from None
    check_lora_tensors(path, tensors)
    return tensors, metadata


def load_lora(path: str | os.PathLike[str], widths: Mapping[str, int] | None = None) -> LoadedLoRA:
    """Any supported layout; widths: our Linears' output widths, for diffusers files missing a fused part."""
    tensors, metadata = read_safetensors(path)
    weights, layout = read_layout(tensors, metadata, source=f"LoRA file {path}", widths=widths)
    return LoadedLoRA(str(path), weights, layout, metadata)


def linear_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """{module: (out, in)} of every 2-D `.weight` (the Linears; meta tensors are fine)."""
    return {k.removesuffix(".weight"): tuple(v.shape) for k, v in state_dict.items()
            if k.endswith(".weight") and v.ndim == 2}  # fmt: skip


def check_fits(lora: LoadedLoRA, shapes: Mapping[str, tuple[int, int]], dit: str) -> None:
    """Every LoRA module must be a Linear of the DiT with the LoRA's widths: a one-line error otherwise."""
    for name, f in sorted(lora.weights.items()):
        if name not in shapes:
            raise LoRAFileError(
                f"LoRA file {lora.path}: module {name} is not a Linear of the DiT {dit} (a LoRA for another model?)"
            )
        want, have = shapes[name], (f.up.shape[0], f.down.shape[1])
        if want != have:
            raise LoRAFileError(
                f"LoRA file {lora.path}: {name} is {have[0]} x {have[1]} in the LoRA but {want[0]} x {want[1]} "
                f"in the DiT {dit} (a LoRA for a model of another size?)"
            )


def multipliers(files: Sequence[str], given: Sequence[float] | None) -> list[float]:
    if given is None:
        return [1.0] * len(files)
    if len(given) != len(files):
        raise UserError(
            f"--lora_multiplier: {len(given)} values for {len(files)} --lora_weight files; give one per file"
        )
    return list(given)


def load_checked(files: Sequence[str], mults: list[float], shapes: Mapping[str, tuple[int, int]],
               dit: str) -> list[tuple[LoadedLoRA, float]]:  # fmt: skip
    """Read every LoRA and check it fits the DiT: all errors come before any work."""
    widths = {name: out for name, (out, _) in shapes.items()}
    loras = []
    for file, multiplier in zip(files, mults, strict=True):
        lora = load_lora(file, widths)
        check_fits(lora, shapes, dit)
        logger.info(
            "%s: %s layout, %d modules, multiplier %g", file, lora.layout, len(lora.weights), multiplier
        )
        loras.append((lora, multiplier))
    return loras
