"""Optimizers (AdamW, AdamW8bit, Adafactor, any module.Class) and learning-rate schedules.

The schedules are small LambdaLRs written here (the names musubi-tuner users pass), so that the trainer does
not import diffusers just for them.
"""

from __future__ import annotations

import ast
import importlib
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from hv_common.errors import UserError
from training.options import LR_SCHEDULERS as SCHEDULERS
from training.options.loop import parse_step_rules

if TYPE_CHECKING:
    from training.options import OptimizerOptions

logger = logging.getLogger(__name__)


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
    given_lr: float | None = lr
    if cls.__name__ == "Adafactor":
        # musubi-tuner's rule: relative_step defaults to True (Adafactor's own step size; --learning_rate is only
        # the lr logged before the first step, and the schedule is "adafactor"), warmup_init forces it on;
        # scale_parameter and warmup_init keep transformers' defaults (True, False).
        kwargs.setdefault("relative_step", True)
        if kwargs.get("warmup_init") and not kwargs["relative_step"]:
            logger.info("Adafactor: warmup_init=True needs relative_step=True: set")
            kwargs["relative_step"] = True
        if kwargs["relative_step"]:
            given_lr = None  # Adafactor refuses a manual lr with relative_step
            logger.info("Adafactor with relative_step=True: --learning_rate %g is the initial lr only", lr)
    try:
        return cls(groups, lr=given_lr, **kwargs)
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
    if name == "rex":
        return rex_lambda(warmup, total, min_ratio)

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


def rex_lambda(warmup: int, total: int, min_ratio: float, alpha: float = 0.1, beta: float = 0.9):
    """musubi-tuner's RexLR (reflected exponential, arXiv 2107.04197) as a factor on the lr: from min_ratio up
    to 1 over the warmup, then z / (alpha + beta z) with z going 1 -> 0, floored at min_ratio; its quirks kept
    (the first step of a run with warmup already follows the curve, the last returns the floor)."""

    def factor(step: int) -> float:
        if warmup == 1 and step == 1:
            return min_ratio
        if warmup > 1 and 1 <= step <= warmup - 1:
            return min_ratio + (1.0 - min_ratio) * (step - 1) / (warmup - 1)
        after, remaining = step - warmup, total - warmup
        if after >= remaining or after == -1 or remaining <= 0:
            return min_ratio
        z = (remaining - (after % remaining)) / remaining
        return min_ratio + (1.0 - min_ratio) * z / (alpha + beta * z)

    return factor


def piecewise_lambda(step_rules: str):
    """diffusers' piecewise_constant: x factor before each rule's step, the last factor after."""
    rules, last = parse_step_rules(step_rules)

    def factor(step: int) -> float:
        for until, value in rules:
            if step < until:
                return value
        return last

    return factor


def build_schedule(
    optimizer: torch.optim.Optimizer, opt: OptimizerOptions, max_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's schedule from its options (one step per optimizer step): a custom class, Adafactor's own
    (relative_step), or a named one."""
    if opt.lr_scheduler_type:
        return build_custom_scheduler(optimizer, opt.lr_scheduler_type, opt.lr_scheduler_args)
    warmup = steps_from(opt.lr_warmup_steps, max_steps)
    if _relative_step(optimizer):
        if warmup:  # musubi-tuner: "adafactor does not require num_warmup_steps"
            raise UserError(
                "--lr_warmup_steps: Adafactor with relative_step=True schedules itself; set it to 0"
            )
        if opt.lr_scheduler not in ("constant", "adafactor"):
            logger.warning(
                "--lr_scheduler %s replaced by adafactor: Adafactor with relative_step=True schedules itself "
                "(pass --optimizer_args relative_step=False to use a schedule)",
                opt.lr_scheduler,
            )
        if len({group["lr"] for group in optimizer.param_groups}) > 1:
            logger.warning(
                "Adafactor with relative_step=True ignores each param group's lr: the LoRA+ ratio has no effect "
                "(as in musubi-tuner); pass --optimizer_args relative_step=False to keep it"
            )
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=opt.learning_rate)
    if opt.lr_scheduler == "adafactor":
        raise UserError(
            "--lr_scheduler adafactor is Adafactor's own step size: it needs --optimizer_type Adafactor "
            "(relative_step=True, its default)"
        )
    kwargs = parse_optimizer_args(opt.lr_scheduler_args)
    if opt.lr_scheduler == "piecewise_constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, piecewise_lambda(str(kwargs["step_rules"])))
    if opt.lr_scheduler == "rex":  # musubi-tuner: "starts and ends with min_lr", by default 1% of the lr
        ratio = 0.01 if opt.lr_scheduler_min_lr_ratio is None else opt.lr_scheduler_min_lr_ratio
        try:
            alpha, beta = float(kwargs.get("rex_alpha", 0.1)), float(kwargs.get("rex_beta", 0.9))
        except (TypeError, ValueError):
            raise UserError(
                f"--lr_scheduler_args for rex: rex_alpha and rex_beta are numbers, got {kwargs}"
            ) from None
        return torch.optim.lr_scheduler.LambdaLR(optimizer, rex_lambda(warmup, max_steps, ratio, alpha, beta))
    return build_scheduler(
        optimizer,
        opt.lr_scheduler,
        warmup,
        max_steps,
        opt.lr_scheduler_num_cycles,
        opt.lr_scheduler_power,
        opt.lr_scheduler_min_lr_ratio or 0.0,
        steps_from(opt.lr_decay_steps, max_steps),
        opt.lr_scheduler_timescale,
    )


def _relative_step(optimizer: torch.optim.Optimizer) -> bool:
    return type(optimizer).__name__ == "Adafactor" and bool(optimizer.defaults.get("relative_step"))


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
