"""Which frames of a clip become training windows: the VAE's 4k+1 rule, the five extraction modes, fps resampling.

Pure index arithmetic, no decoding, so every mode can be tested (and documented) frame by frame.
The rules follow musubi-tuner's VideoDataset, so a dataset TOML written for it yields the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def normalise_target_frames(frames: Sequence[int]) -> tuple[int, ...]:
    """musubi-tuner's order: each rounded down to 4k+1, duplicates dropped, ascending."""
    return tuple(sorted({round_down_to_vae_frames(f) for f in frames}))


def source_timeline(
    frame_count: int, source_fps: float | None, end: int | None = None, target_fps: float = HUNYUAN_FPS
) -> list[int]:
    """The source frames the windows are cut from, in order: entry j is the clip's frame j as the windows see it.

    musubi-tuner's loader, step by step (so the same clip gives the same frames): with source_fps, source
    frame i lands on int(a_i), a_i being target/source added up i times in floating point, and it is kept when
    that number differs from the previous kept frame's; reading stops at the first frame landing at `end` or
    later. `end` is set for frame_extraction = "head" only (max(target_frames)). Below 24 fps every frame
    lands on a new number, so nothing is dropped, but landing numbers skip ahead and `end` cuts earlier.
    """
    if source_fps is None:
        return list(range(frame_count if end is None else min(frame_count, end)))
    delta = float(target_fps) / float(source_fps)
    kept: list[int] = []
    position, previous = 0.0, -1
    for i in range(frame_count):
        landing = int(position)
        position += delta
        if landing == previous:
            continue
        previous = landing
        if end is not None and landing >= end:
            break
        kept.append(i)
    return kept


def read_end(mode: str, target_frames: Sequence[int]) -> int | None:
    """Where musubi-tuner stops reading a clip: after max(target_frames) frames for "head", else at its end."""
    return max(target_frames) if mode == "head" else None
