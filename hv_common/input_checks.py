"""Checks of single inputs that used to fail late or with a traceback: a seed too large for torch, an output
folder that cannot be a folder. Each is one line before any model loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from hv_common.errors import UserError

# torch.manual_seed takes 64 bits: a larger seed was a traceback, after the dataset had loaded
MAX_SEED = 2**64 - 1


def seed(text: str) -> int:
    """argparse type of --seed (and of `seed` in a config file, which goes through the same type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0 and <= 2**64 - 1, got {text[:40]!r}"
        ) from None
    if not 0 <= value <= MAX_SEED:
        shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 and <= 2**64 - 1, got {shown}")
    return value


seed.__name__ = "an integer >= 0 and <= 2**64 - 1"  # argparse names the type in some messages


def check_output_dir(output_dir: str) -> None:
    """--output_dir must be a folder or creatable as one: an existing file there (or above it) was found only
    when the first save ran, after the model had loaded."""
    path = Path(output_dir)
    for place in (path, *path.parents):
        try:
            if place.exists() and not place.is_dir():
                what = "is a file" if place == path else f"is inside {place}, which is a file"
                raise UserError(f"--output_dir {output_dir}: {what}, not a folder; choose a folder")
        except OSError as e:  # a name too long for the file system, ...
            raise UserError(f"--output_dir {output_dir}: cannot use it: {e.strerror}") from None
