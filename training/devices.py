"""Device and dtype choices shared by the commands."""

from __future__ import annotations

import logging

import torch

from .errors import UserError

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip


def parse_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
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


def apply_block_swap(model, n: int, device: torch.device) -> None:
    """--blocks_to_swap N on a loaded DiT (LoRA already applied): checked against its block count; the swapped
    blocks stay in CPU memory, everything else moves to `device`. On a CPU device: a note, nothing else."""
    from hunyuan_model.block_swap import check_blocks_to_swap

    blocks = len(model.blocks())
    try:
        check_blocks_to_swap(n, blocks)
    except ValueError as e:
        raise UserError(f"--{e}") from None
    if n and device.type == "cpu":
        logger.info("--blocks_to_swap %d has no effect on the CPU: the DiT already lives in CPU memory", n)
    elif n:
        model.enable_block_swap(n, device)
        logger.info("block swap: the last %d of %d DiT blocks live in CPU memory", n, blocks)
