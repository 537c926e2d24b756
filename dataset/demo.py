"""Write a tiny demo dataset: `python -m dataset.demo --out demo` (from the repository root).

DIR/data/videos: three short synthetic clips (moving shapes, H.264 mp4, 13-25 frames) with .txt captions
DIR/data/images: three PNG images with .txt captions
DIR/dataset.toml: a dataset config pointing at them; with --out demo it is configs/tiny_dataset.toml
The same bytes every run (seeded drawing, bit-exact encoder settings); about 100 KB, well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

from hv_common.atomic import atomic_path, atomic_write

Frame = np.ndarray  # (H, W, 3) uint8
BACKGROUND = (40, 44, 52)


def _canvas(width: int, height: int) -> Frame:
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = BACKGROUND
    return frame


def _disc(frame: Frame, cx: float, cy: float, radius: float, color: tuple[int, int, int]) -> Frame:
    yy, xx = np.mgrid[: frame.shape[0], : frame.shape[1]]
    frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = color
    return frame


def _box(frame: Frame, x: int, y: int, size: int, color: tuple[int, int, int]) -> Frame:
    frame[max(y, 0) : y + size, max(x, 0) : x + size] = color
    return frame


def _red_square(i: int, n: int) -> Frame:
    return _box(_canvas(160, 96), 4 + i * 5, 30, 32, (220, 40, 40))


def _blue_ball(i: int, n: int) -> Frame:
    return _disc(_canvas(96, 128), 48, 20 + 88 * abs(np.sin(np.pi * i / n)), 14, (40, 90, 230))


def _green_orbit(i: int, n: int) -> Frame:
    angle = 2 * np.pi * i / n
    return _disc(_canvas(128, 128), 64 + 40 * np.cos(angle), 64 + 40 * np.sin(angle), 12, (40, 200, 90))


# name -> (frame count, draw(frame index, frame count) -> frame, caption); all at 24 fps
CLIPS: dict[str, tuple[int, Callable[[int, int], Frame], str]] = {
    "red_square": (25, _red_square, "a red square slides from left to right across a dark background"),
    "blue_ball": (17, _blue_ball, "a blue ball bounces up and down in a tall frame"),
    "green_orbit": (13, _green_orbit, "a green dot circles the center of a square frame"),
}


def _stripes(width: int, height: int) -> Frame:
    frame = _canvas(width, height)
    for x in range(0, width, 16):
        frame[:, x : x + 8] = (230, 200, 60)
    return frame


def _checker(width: int, height: int) -> Frame:
    yy, xx = np.mgrid[:height, :width]
    frame = _canvas(width, height)
    frame[((xx // 16) + (yy // 16)) % 2 == 0] = (240, 240, 240)
    return frame


def _sunset(width: int, height: int) -> Frame:
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[..., 0] = np.linspace(250, 120, height, dtype=np.uint8)[:, None]
    frame[..., 1] = np.linspace(150, 30, height, dtype=np.uint8)[:, None]
    frame[..., 2] = 60
    return _disc(frame, width / 2, height * 0.6, height / 5, (255, 230, 90))


IMAGES: dict[str, tuple[Frame, str]] = {
    "stripes": (_stripes(96, 160), "yellow vertical stripes on a dark background"),
    "checker": (_checker(128, 128), "a black and white checkerboard"),
    "sunset": (_sunset(192, 112), "a yellow sun low over an orange gradient sky"),
}


def write_clip(path: Path, frames: list[Frame], fps: int) -> None:
    """H.264 mp4 with settings that give the same bytes every run (one thread, no timestamps in the header)."""
    height, width = frames[0].shape[:2]
    # format="mp4": the temporary name (hv_common.atomic) has no .mp4 suffix to guess it from
    with (
        atomic_path(path) as tmp,
        av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as container,
    ):
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast", "threads": "1"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def dataset_toml(root: str) -> str:
    """The dataset config for a demo written to `root` (as given: relative paths resolve against the CWD)."""

    def path(*parts: str) -> str:
        return json.dumps("/".join([root.rstrip("/"), *parts]))  # a JSON string is a valid TOML basic string

    return f"""# The demo dataset: `python -m dataset.demo --out {root}` writes it (paths resolve against the current directory).
[general]
resolution = [128, 128]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
image_directory = {path("data", "images")}
cache_directory = {path("cache", "images")}
num_repeats = 2

[[datasets]]
video_directory = {path("data", "videos")}
cache_directory = {path("cache", "videos")}
target_frames = [1, 9, 17]
frame_extraction = "head"
"""


def write_demo(out: str | Path) -> Path:
    """Write the demo dataset under `out`; return the path of its dataset.toml."""
    out = Path(out)
    videos, images = out / "data" / "videos", out / "data" / "images"
    for directory in (videos, images):
        directory.mkdir(parents=True, exist_ok=True)
    for name, (count, draw, caption) in CLIPS.items():
        write_clip(videos / f"{name}.mp4", [draw(i, count) for i in range(count)], 24)
        _write_text(videos / f"{name}.txt", caption + "\n")
    for name, (pixels, caption) in IMAGES.items():
        _write_png(images / f"{name}.png", Image.fromarray(pixels))
        _write_text(images / f"{name}.txt", caption + "\n")
    config = out / "dataset.toml"
    _write_text(config, dataset_toml(out.as_posix()))
    return config


def _write_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=False))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo", help="directory to write into (default: demo)")
    args = parser.parse_args(argv)
    print(write_demo(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
