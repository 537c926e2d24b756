"""Aspect-ratio buckets by area, as musubi-tuner makes them, and the resize-then-center-crop plan to fill one.

Rule (resolution (W, H), step 16): s = isqrt(W*H); widths w run from (s//2 rounded down to 16) up to
below s + 16 in steps of 16; each gives h = (W*H // w) rounded down to 16; both (w, h) and (h, w) are
buckets; the list is unique and sorted. An image goes to the bucket whose w/h is nearest its own (the
first in sorted order on a tie). With bucket_no_upscale an image no larger than W*H keeps its own size,
rounded down to 16 (a side under 16 is an error, as it fails in musubi-tuner). With enable_bucket off every
image goes to (W, H). Videos are always bucketed, without no_upscale (config.VideoDatasetConfig).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RESOLUTION_STEP = 16  # VAE downsampling (8) x DiT patch size (2)


def round_down(value: int, step: int = RESOLUTION_STEP) -> int:
    return value - value % step


def bucket_resolutions(resolution: tuple[int, int], step: int = RESOLUTION_STEP) -> list[tuple[int, int]]:
    """Every (width, height) bucket for the area of `resolution`, sorted."""
    area = resolution[0] * resolution[1]
    side = math.isqrt(area)  # musubi-tuner's int(math.sqrt(area)); equal for every area below 2**52
    buckets = set()
    # max(): below 32x32 musubi-tuner's lowest width would be 0
    for w in range(max(round_down(side // 2, step), step), side + step, step):
        h = round_down(area // w, step)
        buckets.update({(w, h), (h, w)})
    return sorted(buckets)


@dataclass(frozen=True)
class BucketSelector:
    """Chooses the bucket (width, height) for a source of a given size. Deterministic, no state."""

    resolution: tuple[int, int]
    enable_bucket: bool = True
    no_upscale: bool = False
    buckets: tuple[tuple[int, int], ...] = field(init=False)

    def __post_init__(self) -> None:
        buckets = bucket_resolutions(self.resolution) if self.enable_bucket else [tuple(self.resolution)]
        object.__setattr__(self, "buckets", tuple(buckets))

    def select(self, width: int, height: int) -> tuple[int, int]:
        """The bucket for a `width` x `height` source."""
        if not self.enable_bucket:
            return self.buckets[0]
        if self.no_upscale and width * height <= self.resolution[0] * self.resolution[1]:
            if (
                min(width, height) < RESOLUTION_STEP
            ):  # musubi-tuner's bucket would be 0 pixels wide: it fails too
                raise ValueError(
                    f"{width}x{height} is under {RESOLUTION_STEP} pixels on a side, too small with bucket_no_upscale"
                )
            return round_down(width), round_down(height)
        aspect = width / height
        return min(self.buckets, key=lambda b: abs(b[0] / b[1] - aspect))  # min() keeps the first on a tie


@dataclass(frozen=True)
class ResizePlan:
    """Scale the source to `resized` (covering the bucket), then crop `box` = (left, top, right, bottom)."""

    resized: tuple[int, int]
    box: tuple[int, int, int, int]
    scale: float


def resize_plan(source: tuple[int, int], bucket: tuple[int, int]) -> ResizePlan:
    """Scale so the bucket is covered (scale = max(bw/w, bh/h)), then crop the center. Sizes are (w, h)."""
    (w, h), (bw, bh) = source, bucket
    scale = max(bw / w, bh / h)
    # int(x + 0.5) as musubi-tuner rounds; max() guards the covering side against float error
    rw, rh = max(int(w * scale + 0.5), bw), max(int(h * scale + 0.5), bh)
    left, top = (rw - bw) // 2, (rh - bh) // 2
    return ResizePlan((rw, rh), (left, top, left + bw, top + bh), scale)
