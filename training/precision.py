"""Which autocast precision a run uses: --mixed_precision when given, else accelerate's, as in musubi-tuner.

accelerate's setting is `accelerate launch --mixed_precision X`, else the `accelerate config` file (both reach
the training process as ACCELERATE_MIXED_PRECISION), else "no". The resolved value replaces the option in the
run's arguments, so the LoRA's ss_mixed_precision, the memory estimate and the attention check see what
autocast really does. --full_bf16 / --full_fp16: the LoRA's weights in that dtype (below).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from hv_common.errors import UserError

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn

    from training.options import TrainConfig, TrainingOptions

logger = logging.getLogger(__name__)

SUPPORTED = ("no", "fp16", "bf16")


def requested_mixed_precision(mixed_precision: str | None) -> str:
    """What a run will ask autocast for, before any Accelerator exists (the memory estimate)."""
    return mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or "no"


def resolve_mixed_precision(config: TrainConfig, accelerator: Accelerator) -> TrainConfig:
    """`config` with mixed_precision set to the precision autocast uses under `accelerator` (built from it)."""
    chosen = accelerator.mixed_precision
    if chosen not in SUPPORTED:
        raise UserError(
            f"mixed precision {chosen!r} (from accelerate's settings) is not supported; "
            "pass --mixed_precision no, fp16 or bf16"
        )
    used = chosen if accelerator.native_amp or chosen == "no" else "no"
    given = config.training.mixed_precision
    source = "--mixed_precision" if given else "accelerate's setting (launch flag or config)"
    if used != chosen:
        logger.warning(
            f"mixed precision {chosen} from {source}: not available on {accelerator.device}; float32"
        )
    elif not given and used != "no":  # chosen outside this command line: say so
        logger.info(f"mixed precision: {used} (from {source})")
    return dataclasses.replace(config, training=dataclasses.replace(config.training, mixed_precision=used))


# --- --full_bf16 / --full_fp16 ----------------------------------------------------------------------------------
# musubi-tuner's meaning (hv_train.py; its LoRA trainer keeps the flags commented out): the trained weights, and so
# their gradients and the optimizer's state, are held in the autocast dtype, which must be the same one.

FULL_PRECISION = {"full_bf16": "bf16", "full_fp16": "fp16"}


def full_precision_flag(training: TrainingOptions) -> str | None:
    """The --full_* flag given, if any (the options refuse both at once)."""
    if training.full_bf16:
        return "full_bf16"
    return "full_fp16" if training.full_fp16 else None


def apply_full_precision(network: nn.Module, accelerator: Accelerator, config: TrainConfig) -> None:
    """Cast the LoRA's weights to bf16/fp16 (its alpha buffers stay float32) for --full_bf16/--full_fp16,
    after checking that autocast (resolved: launch flag, config, --mixed_precision) uses that dtype. With fp16 the
    GradScaler is told to unscale fp16 gradients, which it refuses by default (musubi-tuner patches it the same
    way)."""
    import torch

    flag = full_precision_flag(config.training)
    if flag is None:
        return
    wanted = FULL_PRECISION[flag]
    # resolve_mixed_precision has put the autocast dtype in the options, whose check refused any other
    assert config.training.mixed_precision == wanted, config.training.mixed_precision
    dtype = torch.bfloat16 if wanted == "bf16" else torch.float16
    for param in network.parameters():
        param.data = param.data.to(dtype)
    if wanted == "fp16" and accelerator.scaler is not None:
        allow_fp16_gradients(accelerator.scaler)
    logger.info(f"--{flag}: LoRA weights, gradients and optimizer state in {dtype}")


def allow_fp16_gradients(scaler: torch.amp.GradScaler) -> None:
    """torch's GradScaler refuses to unscale fp16 gradients ("Attempting to unscale FP16 gradients"): with
    --full_fp16 they are what there is."""
    unscale = scaler._unscale_grads_

    def unscale_fp16_too(optimizer, inv_scale, found_inf, allow_fp16):  # noqa: ANN001 (torch's signature)
        return unscale(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = unscale_fp16_too  # type: ignore[method-assign]
