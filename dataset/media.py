"""Decode media: images through Pillow, videos through PyAV (or a folder of frames, musubi-tuner's image
sequence); resize and center-crop each frame to its bucket.

Resizing is musubi-tuner's, to the pixel: Pillow's Lanczos to enlarge, OpenCV's INTER_AREA to shrink (Pillow's
box filter differs from it by several levels on average).

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
import cv2
import numpy as np
from PIL import Image

from .buckets import resize_plan
from .errors import MediaError
from .sources import IMAGE_EXTENSIONS, frame_files

EXIF_ORIENTATION = 0x0112


def load_image(path: Path) -> Image.Image:
    """An RGB image, its pixels as stored (see _check_orientation)."""
    try:
        with Image.open(path) as image:
            _check_orientation(image, path)
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, MediaError):
            raise
        raise MediaError(f"{path}: cannot read the image: {e}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as load_image will return it, from the header only."""
    try:
        with Image.open(path) as image:
            _check_orientation(image, path)
            return image.size
    except (OSError, ValueError) as e:
        if isinstance(e, MediaError):
            raise
        raise MediaError(f"{path}: cannot read the image: {e}") from None


def _check_orientation(image: Image.Image, path: Path) -> None:
    """An EXIF-rotated photo is refused: musubi-tuner trains its pixels as stored (sideways), a viewer shows it
    upright; either choice made silently would train a picture the user did not expect from one of them."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (0, 1):
        raise MediaError(
            f"{path}: EXIF orientation {orientation} (shown turned or mirrored): musubi-tuner trains the pixels as "
            "stored, a viewer shows them turned; to train what you see, rotate the pixels and drop the tag "
            f"(e.g. mogrify -auto-orient '{path}'); to train them as stored, strip the tag (exiftool -Orientation= ...)"
        )


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> np.ndarray:
    """Scale `image` to cover the (width, height) bucket and crop its center: (H, W, 3) uint8.

    Lanczos (Pillow) when enlarging, area averaging (OpenCV's INTER_AREA) otherwise, as musubi-tuner does.
    """
    if image.size == tuple(bucket):
        return np.asarray(image, dtype=np.uint8)
    plan = resize_plan(image.size, bucket)
    pixels: np.ndarray
    if plan.scale > 1:
        pixels = np.asarray(image.resize(plan.resized, Image.Resampling.LANCZOS), dtype=np.uint8)
    else:
        pixels = cv2.resize(np.asarray(image, dtype=np.uint8), plan.resized, interpolation=cv2.INTER_AREA)
    left, top, right, bottom = plan.box
    return np.ascontiguousarray(pixels[top:bottom, left:right])


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    width: int
    height: int
    fps: (
        float | None
    )  # the container's average rate; informational (source_fps in the TOML decides resampling)


def probe_video(path: Path) -> VideoInfo:
    """Frame count and size without decoding: the container's frame count, else a count of the packets.

    A folder is a video of its images (musubi-tuner's rule), sized by the first one."""
    if path.is_dir():
        frames = _frames_of(path)
        width, height = image_size(frames[0])
        return VideoInfo(len(frames), width, height, None)
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
    if path.is_dir():
        for index, file in enumerate(_frames_of(path)[: last + 1]):
            yield index, load_image(file) if index in wanted else None
        return
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


def _frames_of(folder: Path) -> list[Path]:
    try:
        frames = frame_files(folder)
    except OSError as e:
        raise MediaError(f"{folder}: cannot list the folder of frames: {e.strerror}") from None
    if not frames:
        raise MediaError(
            f"{folder}: a folder of frames with no images in it (looked for {' '.join(IMAGE_EXTENSIONS)})"
        )
    return frames
