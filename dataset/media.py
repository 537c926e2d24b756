"""Decode media: images through Pillow, videos through PyAV; resize and center-crop each frame to its bucket.

PyAV because its wheels bundle FFmpeg (libx264, libvpx, ...): `pip install av` works on a fresh machine
with no system libraries, and it decodes frame by frame, so only the frames a window needs are converted
and kept. (torchvision's video reader does not import beside the CPU torch used here; imageio would need
its own ffmpeg binary and pipes whole frames through a subprocess.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from .buckets import resize_plan
from .errors import MediaError


def load_image(path: Path) -> Image.Image:
    """An RGB image with its EXIF orientation applied (a phone's portrait photo stays portrait)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise MediaError(f"{path}: cannot read the image: {e}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as load_image will return it, from the header only."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            # EXIF orientations 5-8 swap the axes
            return (h, w) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
    except (OSError, ValueError) as e:
        raise MediaError(f"{path}: cannot read the image: {e}") from None


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> np.ndarray:
    """Scale `image` to cover the (width, height) bucket and crop its center: (H, W, 3) uint8.

    Lanczos when enlarging, box (area averaging, like OpenCV's INTER_AREA that musubi-tuner uses) when shrinking.
    """
    plan = resize_plan(image.size, bucket)
    if plan.resized != image.size:
        image = image.resize(
            plan.resized, Image.Resampling.LANCZOS if plan.scale > 1 else Image.Resampling.BOX
        )
    return np.asarray(image.crop(plan.box), dtype=np.uint8)


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    width: int
    height: int
    fps: (
        float | None
    )  # the container's average rate; informational (source_fps in the TOML decides resampling)


def probe_video(path: Path) -> VideoInfo:
    """Frame count and size without decoding: the container's frame count, else a count of the packets."""
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            count = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            rate = float(stream.average_rate) if stream.average_rate else None
            return VideoInfo(count, stream.codec_context.width, stream.codec_context.height, rate)
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot read the video: {e}") from None


def decode_frames(path: Path, wanted: set[int]) -> Iterator[tuple[int, Image.Image | None]]:
    """Yield (index, frame) for every decoded frame up to the last wanted one; the frame is None when not wanted.

    Frames in between must be decoded (inter-frame codecs) but are never converted to RGB.
    """
    last = max(wanted, default=-1)
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"  # frame threads: faster, same pixels
            for index, frame in enumerate(container.decode(stream)):
                if index > last:
                    return
                yield index, frame.to_image() if index in wanted else None
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode the video: {e}") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    return container.streams.video[0]
