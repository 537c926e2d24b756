"""Which frames of a clip become training windows: the VAE's 4k+1 rule, the five extraction modes, fps resampling.

Pure index arithmetic, no decoding, so every mode can be tested (and documented) frame by frame.
The rules follow musubi-tuner's VideoDataset, so a dataset TOML written for it yields the same windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

VAE_FRAME_STRIDE = 4  # the causal 3D VAE packs 1 + 4k frames into 1 + k latent frames
HUNYUAN_FPS = 24  # HunyuanVideo was trained on 24 fps clips
FRAME_EXTRACTION_MODES = ("head", "chunk", "slide", "uniform", "full")


def round_down_to_vae_frames(frame_count: int) -> int:
    """The largest 4k+1 that is <= frame_count (frame_count >= 1)."""
    if frame_count < 1:
        raise ValueError(f"a frame count must be at least 1, got {frame_count}")
    return (frame_count - 1) // VAE_FRAME_STRIDE * VAE_FRAME_STRIDE + 1


def is_vae_frame_count(frame_count: int) -> bool:
    return frame_count >= 1 and (frame_count - 1) % VAE_FRAME_STRIDE == 0


@dataclass(frozen=True)
class FrameWindow:
    """`count` consecutive frames from `start`, on the (resampled) timeline of the clip."""

    start: int
    count: int

    @property
    def indices(self) -> range:
        return range(self.start, self.start + self.count)


def frame_windows(
    frame_count: int,
    mode: str,
    target_frames: Sequence[int],
    *,
    frame_stride: int = 1,
    frame_sample: int = 1,
    max_frames: int = 129,
) -> list[FrameWindow]:
    """The windows a clip of `frame_count` frames yields, in musubi-tuner's order (per target, then start).

    A target longer than the clip yields nothing for that target. Identical windows (possible with
    `uniform` when frame_sample exceeds the positions available) are kept once: they would be one cache file.
    """
    if mode not in FRAME_EXTRACTION_MODES:
        raise ValueError(
            f"unknown frame_extraction {mode!r}; expected one of {', '.join(FRAME_EXTRACTION_MODES)}"
        )
    if mode == "full":
        windows = _full(frame_count, max_frames)
    else:
        windows = []
        for target in target_frames:
            windows.extend(
                FrameWindow(s, target) for s in _starts(frame_count, mode, target, frame_stride, frame_sample)
            )
    return list(dict.fromkeys(windows))


def _starts(frame_count: int, mode: str, target: int, stride: int, sample: int) -> list[int]:
    if target > frame_count:
        return []
    if mode == "head":
        return [0]
    if mode == "chunk":  # back-to-back, a short tail is dropped
        return list(range(0, frame_count - target + 1, target))
    if mode == "slide":
        return list(range(0, frame_count - target + 1, stride))
    # uniform: numpy's linspace truncated to int, exactly as musubi-tuner computes it
    return [int(s) for s in np.linspace(0, frame_count - target, sample, dtype=int)]


def _full(frame_count: int, max_frames: int) -> list[FrameWindow]:
    count = min(frame_count, max_frames)
    return [FrameWindow(0, round_down_to_vae_frames(count))] if count >= 1 else []


def resampled_frame_count(frame_count: int, source_fps: float | None, target_fps: float = HUNYUAN_FPS) -> int:
    """How many frames a clip of `frame_count` frames at `source_fps` has once resampled to `target_fps`."""
    ratio = _ratio(source_fps, target_fps)
    if ratio is None or frame_count < 1:
        return frame_count
    return math.floor((frame_count - 1) * ratio) + 1


def resampled_to_source(index: int, source_fps: float | None, target_fps: float = HUNYUAN_FPS) -> int:
    """The source frame shown at frame `index` of the resampled timeline.

    Like musubi-tuner, resampling only drops frames: source frame i lands on resampled frame
    floor(i * target/source) and the first source frame to land on each resampled frame is kept, so
    resampled frame j is source frame ceil(j * source/target). A source_fps at or below the target keeps
    every frame (nothing is duplicated).
    """
    ratio = _ratio(source_fps, target_fps)
    return index if ratio is None else math.ceil(index / ratio)


def _ratio(source_fps: float | None, target_fps: float) -> Fraction | None:
    """target/source as an exact fraction (decimal fps values like 29.97 are taken literally), or None."""
    if source_fps is None:
        return None
    ratio = Fraction(str(target_fps)) / Fraction(str(source_fps))
    return ratio if ratio < 1 else None
