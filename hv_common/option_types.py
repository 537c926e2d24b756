"""Value converters for options: each raises ArgumentTypeError saying what was expected, which argparse and the
config-file reader turn into one line. Shared by every command's options."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from hv_common.dtypes import OPTION_NAMES as DTYPE_NAMES  # text: parsing imports no torch


def _number(kind: type, check: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and check(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = expected  # argparse names the type in some messages
    return convert


integer = _number(int, lambda v: True, "an integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_int = _number(int, lambda v: v > 0, "an integer > 0")
number = _number(float, lambda v: True, "a number")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
probability = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
ratio = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
first_timestep = _number(int, lambda v: 0 <= v <= 999, "an integer in [0, 999]")
last_timestep = _number(int, lambda v: 1 <= v <= 1000, "an integer in [1, 1000]")


def steps_or_ratio(text: str) -> int | float:
    """musubi-tuner's warmup/decay rule: an integer is a step count, a number below 1 (or `N%`) a ratio of
    the training steps."""
    expected = f"a step count, a ratio in [0, 1) or a percentage, got {text!r}"
    percent = text.strip().endswith("%")
    try:
        value = float(text.strip().removesuffix("%")) / (100 if percent else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}") from None
    if not (math.isfinite(value) and value >= 0) or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected {expected}")
    if percent and value >= 1:
        raise argparse.ArgumentTypeError(f"expected {expected}")
    return int(value) if value >= 1 or value == 0 else value


def dtype_name(text: str) -> str:
    name = text.strip().lower()
    if name not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DTYPE_NAMES)}, got {text!r}")
    return name
