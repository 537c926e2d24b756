"""Dataset keys musubi-tuner accepts for other models (FramePack, FLUX.1 Kontext, Qwen-Image, ControlNet, ...).

A dataset TOML shared between models may carry them, so they are accepted where musubi-tuner accepts them
(the dataset tables only, image or video as its schema says), type-checked as it checks them, and dropped
with a one-line warning: none of them changes what HunyuanVideo trains on. Elsewhere they are errors,
as they are in musubi-tuner.
"""

from __future__ import annotations

import logging
from typing import Any

from . import schema
from .schema import BadValue, Checker

logger = logging.getLogger(__name__)


def _int(value: Any) -> int:
    if not schema.is_int(value):
        raise BadValue(f"expected an integer, got {schema.describe(value)}")
    return value


def _int_list(value: Any) -> list[int]:
    if not (isinstance(value, list) and all(schema.is_int(v) for v in value)):
        raise BadValue(f"expected a list of integers, got {schema.describe(value)}")
    return value


def _int_or_pair(value: Any) -> Any:
    if schema.is_int(value) or (
        isinstance(value, list) and len(value) == 2 and all(schema.is_int(v) for v in value)
    ):
        return value
    raise BadValue(f"expected an integer or [width, height], got {schema.describe(value)}")


# key -> (checker, what it is for in musubi-tuner)
IMAGE_KEYS: dict[str, tuple[Checker, str]] = {
    "control_directory": (
        schema.text,
        "control images (FramePack 1f, FLUX.1 Kontext, FLUX.2, Qwen-Image-Edit)",
    ),
    "multiple_target": (schema.boolean, "Qwen-Image-Layered"),
    "fp_latent_window_size": (_int, "FramePack"),
    "fp_1f_clean_indices": (_int_list, "FramePack one-frame training"),
    "fp_1f_target_index": (_int, "FramePack one-frame training"),
    "fp_1f_no_post": (schema.boolean, "FramePack one-frame training"),
    "no_resize_control": (schema.boolean, "control images"),
    "control_resolution": (_int_or_pair, "control images"),
    # musubi-tuner's older names, which it renames to the two keys above
    "flux_kontext_no_resize_control": (schema.boolean, "control images (old name of no_resize_control)"),
    "qwen_image_edit_no_resize_control": (schema.boolean, "control images (old name of no_resize_control)"),
    "qwen_image_edit_control_resolution": (_int_or_pair, "control images (old name of control_resolution)"),
}
VIDEO_KEYS: dict[str, tuple[Checker, str]] = {
    "control_directory": (schema.text, "control videos (ControlNet training)"),
    "fp_latent_window_size": (_int, "FramePack"),
}
ALL_KEYS = frozenset(IMAGE_KEYS) | frozenset(VIDEO_KEYS)


def take_foreign_keys(table: dict[str, Any], is_video: bool, where: str) -> dict[str, Any]:
    """`table` without the other models' keys; each one found is type-checked and named in a warning.

    where: "file: datasets[0]", for the warning. A key in the wrong kind of dataset, or of the wrong type, is a
    ForeignKeyError (config.py names the file and the table).
    """
    allowed = VIDEO_KEYS if is_video else IMAGE_KEYS
    kind = "video" if is_video else "image"
    kept = {}
    for key, value in table.items():
        if key not in ALL_KEYS:
            kept[key] = value
            continue
        if key not in allowed:
            raise ForeignKeyError(key, f"not valid in a {kind} dataset (musubi-tuner refuses it too)")
        checker, purpose = allowed[key]
        try:
            checker(value)
        except BadValue as e:
            raise ForeignKeyError(key, str(e)) from None
        logger.warning(
            f"{where}.{key}: for {purpose} in musubi-tuner; it does nothing for HunyuanVideo, ignored"
        )
    return kept


class ForeignKeyError(ValueError):
    """A foreign key in the wrong place or of the wrong type; config.py adds the file and table."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
