"""Write frames as an H.264 mp4 (PyAV) or, for a single frame, a PNG; read them back (tests, checks).

Writes go to a temporary name in the target's folder and are renamed when complete (hv_common.atomic).
PyAV and Pillow are imported only when used.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .atomic import atomic_path

DEFAULT_FPS = 24


def _as_frames(frames: Any) -> np.ndarray:
    """uint8 (F, H, W, 3) as a numpy array, from numpy or torch (CPU)."""
    array = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {array.dtype} {tuple(array.shape)}")
    return array


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p halves the chroma planes: odd sizes get one more row/column repeated from the edge."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _h264_encoder() -> Literal["libx264", "h264"]:
    import av

    return "libx264" if "libx264" in av.codecs_available else "h264"


def write_mp4(frames: Any, path: str | Path, fps: int = DEFAULT_FPS) -> Path:
    """uint8 (F, H, W, 3) RGB frames -> an H.264 yuv420p mp4 at `path`."""
    import av

    video = _even(_as_frames(frames))
    path = Path(path)
    # format="mp4": the temporary name has no .mp4 suffix to guess it from
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(_h264_encoder(), rate=Fraction(fps))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"  # what every player decodes
        stream.options = {"crf": "17"}  # near-lossless: previews are for judging detail
        for image in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return path


def write_png(frame: Any, path: str | Path) -> Path:
    """uint8 (H, W, 3) or (1, H, W, 3) -> a PNG at `path`."""
    from PIL import Image

    array = frame.numpy() if hasattr(frame, "numpy") else np.asarray(frame)
    image = Image.fromarray(_as_frames(array if array.ndim == 4 else array[None])[0])
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def write_media(frames: Any, stem: str | Path, fps: int = DEFAULT_FPS) -> Path:
    """`stem`.png for one frame, else `stem`.mp4; returns the path written."""
    array = _as_frames(frames)
    stem = Path(stem)
    if array.shape[0] == 1:
        return write_png(array, stem.with_name(stem.name + ".png"))
    return write_mp4(array, stem.with_name(stem.name + ".mp4"), fps)


def read_frames(path: str | Path) -> np.ndarray:
    """uint8 (F, H, W, 3) RGB frames of an mp4 (or any video PyAV reads) or an image."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))[None]
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def video_fps(path: str | Path) -> Fraction:
    import av

    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    if rate is None:
        raise ValueError(f"{path}: its video stream names no frame rate")
    return Fraction(rate)
