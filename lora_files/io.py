"""LoRA files on disk: the one reader (with its checks) and the writer (atomic), a network's weights saved and
loaded through them, and a file of any layout read into our common form and checked against a DiT."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from hv_common.atomic import atomic_write
from hv_common.errors import UserError
from lora_files.errors import LoRAFileError
from lora_files.layouts import LoRAWeights, read_layout

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


def save_network(
    network,
    path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """A network's state dict as a LoRA file (optionally cast to `dtype`), written atomically."""
    tensors = {
        k: v.detach() if dtype is None else v.detach().to(dtype) for k, v in network.state_dict().items()
    }
    save_lora_file(path, tensors, metadata)


def load_network(network, path: str | os.PathLike[str]) -> None:
    """Load a file saved by `save_network` into `network`: the same modules and ranks, or a one-line error."""
    expected = network.state_dict()
    tensors, _ = read_safetensors(path)
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
    network.load_state_dict(tensors, strict=True)


def rank_and_alpha(path: str | os.PathLike[str]) -> tuple[int, float]:
    """The rank and alpha every module of a LoRA file shares (--dim_from_weights), or a one-line error.

    Shapes come from the header and only the one-number alphas are read: the weights are read (and checked)
    once, by load_network, right after."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            keys = list(f.keys())
            ranks = {int(f.get_slice(k).get_shape()[0]) for k in keys if k.endswith(".lora_down.weight")}
            alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    except Exception as e:  # safetensors raises its own error types for missing, torn or foreign files
        raise LoRAFileError(
            f"cannot read LoRA file {path}: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from None
    if len(ranks) != 1 or len(alphas) > 1:
        found = "no lora_down weights" if not ranks else f"ranks {sorted(ranks)} and alphas {sorted(alphas)}"
        raise LoRAFileError(
            f"--dim_from_weights: LoRA file {path} has {found}; one rank and alpha are needed, else give "
            "--network_dim / --network_alpha (and rank_patterns / alpha_patterns in --network_args)"
        )
    rank = ranks.pop()
    return rank, alphas.pop() if alphas else float(rank)


def load_lora(path: str | os.PathLike[str], widths: Mapping[str, int] | None = None) -> LoadedLoRA:
    """Any supported layout; widths: our Linears' output widths, for diffusers files missing a fused part."""
    tensors, metadata = read_safetensors(path)
    weights, layout = read_layout(tensors, metadata, source=f"LoRA file {path}", widths=widths)
    return LoadedLoRA(str(path), weights, layout, metadata)


def linear_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """{module: (out, in)} of every 2-D `.weight` (the Linears; meta tensors are fine)."""
    return {
        k.removesuffix(".weight"): (v.shape[0], v.shape[1])
        for k, v in state_dict.items()
        if k.endswith(".weight") and v.ndim == 2
    }


def check_fits(lora: LoadedLoRA, shapes: Mapping[str, tuple[int, int]], dit: str) -> None:
    """Every LoRA module must be a Linear of the DiT with the LoRA's widths: a one-line error otherwise."""
    for name, f in sorted(lora.weights.items()):
        if name not in shapes:
            raise LoRAFileError(
                f"LoRA file {lora.path}: module {name} is not a Linear of the DiT {dit} (a LoRA for another model?)"
            )
        want, have = shapes[name], f.shape
        if want != have:
            raise LoRAFileError(
                f"LoRA file {lora.path}: {name} is {have[0]} x {have[1]} in the {f.kind} but {want[0]} x {want[1]} "
                f"in the DiT {dit} (a LoRA for a model of another size?)"
            )


def multipliers(files: Sequence[str], given: Sequence[float] | None, fill: bool = False) -> list[float]:
    """One multiplier per file: 1.0 each unless given. fill: fewer values than files is musubi-tuner's meaning
    (the files without one get 1.0); else one per file is required. More values than files is an error
    either way (the extra ones would do nothing)."""
    given = list(given or ())
    if len(given) > len(files) or (given and not fill and len(given) != len(files)):
        raise UserError(
            f"--lora_multiplier: {len(given)} values for {len(files)} --lora_weight files; give one per file"
        )
    return given + [1.0] * (len(files) - len(given))


def load_checked(
    files: Sequence[str], mults: list[float], shapes: Mapping[str, tuple[int, int]], dit: str
) -> list[tuple[LoadedLoRA, float]]:
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
