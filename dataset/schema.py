"""The dataset TOML's keys: where each may appear, its type check and its range check.

Each checker takes the raw TOML value and returns the typed value, or raises BadValue with what was
expected; config.py adds the file and the key to make the one-line DatasetConfigError.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

from .frames import FRAME_EXTRACTION_MODES


class BadValue(ValueError):
    """A value of the wrong type or out of range; the message says what was expected."""


# Upper bounds: a value past them is a typo or a hostile file, and would exhaust memory hours later.
MAX_SIDE = 16384  # pixels
MAX_COUNT = 100_000  # batch size, repeats, frame counts, strides
MAX_TEXT = 4096  # characters: the longest path Linux accepts


def shorten(text: str, limit: int = 80) -> str:
    """A user's text cut for a one-line message (a 10 MB key must not become a 10 MB line)."""
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"


def describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return f"{kind.get(type(value), type(value).__name__)} {shorten(repr(value))}"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML true is not the number 1


def positive_int(value: Any) -> int:
    if not is_int(value):
        raise BadValue(f"expected an integer >= 1, got {describe(value)}")
    if not 1 <= value <= MAX_COUNT:
        raise BadValue(f"expected an integer >= 1 and <= {MAX_COUNT}, got {shorten(str(value))}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"expected true or false, got {describe(value)}")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"expected a string, got {describe(value)}")
    if not value.strip():
        raise BadValue("expected a non-empty string")
    if len(value) > MAX_TEXT or "\0" in value:
        raise BadValue(
            f"expected a path or name of at most {MAX_TEXT} characters without NUL, got {describe(value)}"
        )
    return value


def resolution(value: Any) -> tuple[int, int]:
    """[width, height], or one integer for a square."""
    if is_int(value):
        value = [value, value]
    if not (isinstance(value, list) and len(value) == 2 and all(is_int(v) for v in value)):
        raise BadValue(f"expected [width, height] or one integer, got {describe(value)}")
    if min(value) < 16 or max(value) > MAX_SIDE:
        raise BadValue(
            f"expected a width and height of at least 16 and at most {MAX_SIDE}, got {shorten(str(value))}"
        )
    return value[0], value[1]


def target_frames(value: Any) -> tuple[int, ...]:
    if not (isinstance(value, list) and value and all(is_int(v) for v in value)):
        raise BadValue(f"expected a non-empty list of integers like [1, 25, 45], got {describe(value)}")
    if min(value) < 1 or max(value) > MAX_COUNT:
        raise BadValue(f"expected frame counts >= 1 and <= {MAX_COUNT}, got {shorten(str(value))}")
    return tuple(value)


def frame_extraction(value: Any) -> str:
    value = text(value)
    if value not in FRAME_EXTRACTION_MODES:
        raise BadValue(
            f"expected one of {', '.join(FRAME_EXTRACTION_MODES)}, got {value!r}{did_you_mean(value, FRAME_EXTRACTION_MODES)}"
        )
    return value


def source_fps(value: Any) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise BadValue(f"expected a number of frames per second, got {describe(value)}")
    if not (math.isfinite(value) and value > 0):
        raise BadValue(f"expected a positive frame rate, got {value}")
    return float(value)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


Checker = Callable[[Any], Any]

# Keys allowed in [general] and in every dataset table.
COMMON_KEYS: dict[str, Checker] = {
    "resolution": resolution,
    "caption_extension": text,
    "batch_size": positive_int,
    "num_repeats": positive_int,
    "enable_bucket": boolean,
    "bucket_no_upscale": boolean,
}
# Keys for video datasets; in [general] they are defaults for the video datasets only.
VIDEO_KEYS: dict[str, Checker] = {
    "target_frames": target_frames,
    "frame_extraction": frame_extraction,
    "frame_stride": positive_int,
    "frame_sample": positive_int,
    "max_frames": positive_int,
    "source_fps": source_fps,
}
IMAGE_SOURCE_KEYS = ("image_directory", "image_jsonl_file")
VIDEO_SOURCE_KEYS = ("video_directory", "video_jsonl_file")
SOURCE_KEYS = IMAGE_SOURCE_KEYS + VIDEO_SOURCE_KEYS
# Paths, allowed in dataset tables only (a shared cache_directory would mix datasets).
PATH_KEYS: dict[str, Checker] = {key: text for key in (*SOURCE_KEYS, "cache_directory")}

GENERAL_KEYS: dict[str, Checker] = {**COMMON_KEYS, **VIDEO_KEYS}
DATASET_KEYS: dict[str, Checker] = {**COMMON_KEYS, **VIDEO_KEYS, **PATH_KEYS}
TOP_LEVEL_KEYS = ("general", "datasets", "validation_datasets")
