"""LoRA safetensors files: written atomically (a crash never leaves a torn file), read with a one-line error."""

from __future__ import annotations

import os
from collections.abc import Mapping

import safetensors.torch
import torch

from hv_common.atomic import atomic_write


class LoRAFileError(ValueError):
    """A LoRA file that cannot be read, or that does not fit the network (other modules or ranks)."""


def save_lora_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {value!r}")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = dict(metadata) if metadata else None
    atomic_write(path, lambda tmp: safetensors.torch.save_file(cpu, tmp, metadata=meta))


def check_lora_tensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse what would load but poison the model: non-float weights, NaN / Inf, empty factors, odd alphas.

    Named by key: a NaN in a downloaded LoRA otherwise shows up as a black video or a NaN loss hours later.
    """
    for key in sorted(tensors):
        value = tensors[key]
        if key.endswith("alpha"):
            if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
                raise LoRAFileError(
                    f"LoRA file {path}: {key} must be one number, got {value.dtype} {tuple(value.shape)}"
                )
        elif not value.is_floating_point():
            raise LoRAFileError(
                f"LoRA file {path}: {key} is {value.dtype}; LoRA weights must be floating point"
            )
        elif value.numel() == 0:
            raise LoRAFileError(f"LoRA file {path}: {key} is empty (shape {tuple(value.shape)})")
        if not bool(torch.isfinite(value.float()).all()):
            raise LoRAFileError(f"LoRA file {path}: {key} holds NaN or Inf values; the file is broken")


def load_lora_file(
    path: str | os.PathLike[str], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Read a LoRA file and check it has exactly the keys and shapes of `expected` (a network's state dict)."""
    if os.path.isdir(path):
        raise LoRAFileError(f"LoRA file {path}: is a directory, not a .safetensors file")
    try:
        tensors = safetensors.torch.load_file(os.fspath(path))
    except FileNotFoundError:
        raise LoRAFileError(f"LoRA file not found: {path}") from None
    except Exception as e:  # safetensors raises its own error types for torn or foreign files
        raise LoRAFileError(f"cannot read LoRA file {path}: {type(e).__name__}: {e}".split("\n")[0]) from None
    check_lora_tensors(path, tensors)
    missing = sorted(expected.keys() - tensors.keys())
    extra = sorted(tensors.keys() - expected.keys())
    if missing or extra:
        raise LoRAFileError(
            f"LoRA file {path} does not fit this network: {len(missing)} keys missing"
            f"{' (e.g. ' + missing[0] + ')' if missing else ''}, {len(extra)} unexpected"
            f"{' (e.g. ' + extra[0] + ')' if extra else ''}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise LoRAFileError(
                f"LoRA file {path}: {key} has shape {tuple(value.shape)}, the network expects "
                f"{tuple(expected[key].shape)} (another --network_dim or rank_patterns?)"
            )
    return tensors
