"""Which autocast precision a run uses: --mixed_precision when given, else accelerate's, as in musubi-tuner.

accelerate's setting is `accelerate launch --mixed_precision X`, else the `accelerate config` file (both reach
the training process as ACCELERATE_MIXED_PRECISION), else "no". The resolved value replaces the option in the
run's arguments, so the LoRA's ss_mixed_precision, the memory estimate and the attention check see what
autocast really does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from hv_common.errors import UserError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from training.options import TrainConfig

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
