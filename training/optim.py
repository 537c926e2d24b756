"""Optimizers (AdamW, AdamW8bit, Adafactor, any module.Class) and learning-rate schedules.

The schedules are small LambdaLRs written here (the names musubi-tuner users pass), so that the trainer does
not import diffusers just for them.
"""

from __future__ import annotations

import ast
import importlib
import math
from collections.abc import Sequence

import torch

from hv_common.errors import UserError
from training.options import LR_SCHEDULERS as SCHEDULERS


def parse_optimizer_args(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--optimizer_args {item!r}: expected key=value")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()  # a bare word, e.g. a string option
    return out


def _optimizer_class(name: str):
    lowered = name.lower()
    if lowered == "adamw":
        from training.eager_optim import (
            EagerAdamW,  # torch's AdamW without importing torch._dynamo (see there)
        )

        return EagerAdamW
    if lowered == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError(
                "--optimizer_type AdamW8bit needs bitsandbytes: pip install bitsandbytes"
            ) from None
        return bnb.optim.AdamW8bit
    if lowered == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    module_name, _, class_name = name.rpartition(".")
    if not module_name:
        raise UserError(f"--optimizer_type {name}: unknown; use AdamW, AdamW8bit, Adafactor or module.Class")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--optimizer_type {name}: cannot import it ({e})") from None


def build_optimizer(name: str, groups: list[dict], lr: float, extra: Sequence[str]) -> torch.optim.Optimizer:
    cls = _optimizer_class(name)
    kwargs = parse_optimizer_args(extra)
    if cls.__name__ == "Adafactor":  # a fixed lr, as musubi-tuner uses it
        kwargs.setdefault("relative_step", False)
        kwargs.setdefault("scale_parameter", False)
        kwargs.setdefault("warmup_init", False)
    try:
        return cls(groups, lr=lr, **kwargs)
    except TypeError as e:
        raise UserError(f"--optimizer_args for {cls.__name__}: {e}") from None


def lr_lambda(
    name: str,
    warmup: int,
    total: int,
    cycles: float = 1.0,
    power: float = 1.0,
    min_ratio: float = 0.0,
    decay: int = 0,
    timescale: int | None = None,
):
    """A factor on the base lr per optimizer step, as transformers' schedules of the same names compute it."""
    if name not in SCHEDULERS:
        raise UserError(f"--lr_scheduler {name}: use one of {', '.join(SCHEDULERS)}")
    timescale = timescale or warmup or 10_000

    def shape(step: int) -> float:
        """1 -> 0 after warmup (min_ratio is applied on top)."""
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "linear":
            return 1.0 - progress
        if name in ("cosine", "cosine_with_min_lr"):
            return 0.5 * (1.0 + math.cos(math.pi * progress))  # half a wave: lr -> its floor
        if name == "cosine_with_restarts":
            return 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))
        if name == "polynomial":
            return (1.0 - progress) ** power
        if name == "inverse_sqrt":
            return 1.0 / math.sqrt((step - warmup + timescale) / timescale)
        if name == "warmup_stable_decay":  # flat, then linear to the floor over the last `decay` steps
            return 1.0 if step < total - decay else max(0.0, (total - step) / max(1, decay))
        return 1.0  # constant, constant_with_warmup

    def factor(step: int) -> float:
        if name != "constant" and step < warmup:
            return (step + 1) / warmup  # nonzero from the first step
        return min_ratio + (1.0 - min_ratio) * shape(step)

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    warmup: int,
    total: int,
    cycles: float = 1.0,
    power: float = 1.0,
    min_ratio: float = 0.0,
    decay: int = 0,
    timescale: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(name, warmup, total, cycles, power, min_ratio, decay, timescale)
    )


def build_custom_scheduler(
    optimizer: torch.optim.Optimizer, class_name: str, args: Sequence[str]
) -> torch.optim.lr_scheduler.LRScheduler:
    """--lr_scheduler_type module.Class (a bare name: torch.optim.lr_scheduler's) built as
    Class(optimizer, **--lr_scheduler_args), as musubi-tuner does; stepped once per optimizer step."""
    module_name, _, name = class_name.rpartition(".")
    try:
        module = importlib.import_module(module_name or "torch.optim.lr_scheduler")
    except ImportError as e:
        raise UserError(f"--lr_scheduler_type {class_name}: cannot import {module_name} ({e})") from None
    cls = getattr(module, name, None)
    if not callable(cls):
        raise UserError(f"--lr_scheduler_type {class_name}: {module.__name__} has no class {name}")
    kwargs = parse_optimizer_args(args)
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"--lr_scheduler_type {class_name} with {kwargs}: {e}") from None


def steps_from(value: int | float | None, total: int) -> int:
    """--lr_warmup_steps / --lr_decay_steps: a count, or a ratio (< 1) of the training steps."""
    if not value:
        return 0
    return int(value * total) if isinstance(value, float) and value < 1 else int(value)
