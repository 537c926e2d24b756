"""The inputs of the musubi-tuner parity table (tests/dataset/test_dataset_musubi_parity.py): media and dataset
TOMLs.

Shared by the test and by tests/helpers/derive_musubi_table.py, which runs musubi-tuner's own code on the same
files to produce the expected outcomes. Only numpy, Pillow and PyAV: both environments have them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
from PIL import Image

# (width, height) of the images: landscape, portrait, square, tiny, huge aspect ratios, odd sizes
IMAGE_SIZES = [
    (1920, 1080),
    (1080, 1920),
    (640, 480),
    (300, 200),
    (512, 512),
    (960, 544),
    (1000, 1000),
    (2000, 500),
    (50, 400),
    (333, 777),
    (1280, 720),
    (100, 100),
    (17, 33),
]
# name: (width, height, frames); frame i is flat gray 4 + 5i, so a decoded frame tells its index (even sizes: H.264)
CLIPS = {
    "tall": (112, 144, 17),
    "wide": (200, 100, 40),
    "small": (64, 64, 7),
    "long": (300, 170, 50),
    "phone": (90, 160, 13),
}
# folders of frames, read as videos: name -> (frames, size of even frames, size of odd frames); the bucket
# comes from the first frame, every frame is fitted to it. "steps.mp4" sits in videos/ (a folder named like a
# video is a video to musubi-tuner's glob); "jumps" is a JSONL video_path.
FRAME_FOLDERS = {"videos/steps.mp4": (11, (80, 60), (96, 64)), "frames/jumps": (13, (120, 90), (120, 90))}
GRAY_BASE, GRAY_STEP = 4, 5

IMAGE_SETTINGS = [  # (resolution, enable_bucket, bucket_no_upscale, batch_size, num_repeats)
    ([960, 544], False, False, 1, 1),
    ([960, 544], True, False, 2, 1),
    ([960, 544], True, True, 3, 2),
    ([960, 544], False, True, 1, 3),
    ([256, 256], True, False, 4, 1),
    ([256, 256], True, True, 1, 1),
    ([512, 768], True, False, 2, 2),
    ([512, 768], False, False, 5, 1),
    ([720, 720], True, True, 2, 1),
    ([100, 60], True, False, 1, 1),
    ([1280, 720], True, False, 3, 1),
    ([64, 64], True, True, 2, 2),
]
VIDEO_SETTINGS = [  # extra TOML lines of a video dataset (resolution and bucketing come from VIDEO_BUCKETS)
    'target_frames = [1, 9, 17]\nframe_extraction = "head"',
    'target_frames = [25, 1, 9]\nframe_extraction = "head"',
    'target_frames = [24, 10]\nframe_extraction = "head"',
    'target_frames = [5, 9]\nframe_extraction = "chunk"',
    'target_frames = [1, 13]\nframe_extraction = "chunk"',
    'target_frames = [1, 9]\nframe_extraction = "slide"\nframe_stride = 4',
    'target_frames = [13]\nframe_extraction = "slide"\nframe_stride = 10',
    'target_frames = [9]\nframe_extraction = "uniform"\nframe_sample = 3',
    'target_frames = [5, 9]\nframe_extraction = "uniform"\nframe_sample = 1',
    'target_frames = [9]\nframe_extraction = "uniform"\nframe_sample = 8',
    'frame_extraction = "full"\nmax_frames = 129',
    'frame_extraction = "full"\nmax_frames = 20',
    'target_frames = [9]\nframe_extraction = "full"\nmax_frames = 3',
    'target_frames = [9, 17]\nframe_extraction = "head"\nsource_fps = 30.0',
    'target_frames = [9, 17]\nframe_extraction = "head"\nsource_fps = 20.0',
    'target_frames = [5]\nframe_extraction = "slide"\nframe_stride = 3\nsource_fps = 60.0',
    'frame_extraction = "full"\nmax_frames = 33\nsource_fps = 50.0',
    'target_frames = [5]\nframe_extraction = "chunk"\nsource_fps = 12.0',
    'target_frames = [1, 5]\nframe_extraction = "uniform"\nframe_sample = 4\nsource_fps = 29.97',
]
JSONL_SETTINGS = [  # a video_jsonl_file of the folder "jumps" and the clip "wide"
    'target_frames = [1, 5, 9]\nframe_extraction = "head"',
    'target_frames = [5]\nframe_extraction = "slide"\nframe_stride = 2\nsource_fps = 30.0',
    'frame_extraction = "full"\nmax_frames = 129\nenable_bucket = true\nbucket_no_upscale = true',
]
VIDEO_BUCKETS = [  # (resolution, enable_bucket, bucket_no_upscale, batch_size, num_repeats)
    ([128, 128], True, False, 1, 1),
    ([128, 128], False, False, 2, 1),
    ([160, 96], True, True, 1, 2),
    ([100, 100], False, True, 3, 1),
]


# rows whose pixels are compared too (a digest of each resized image / window): enlarging and shrinking
PIXEL_IMAGE_SETTINGS = (1, 4)
PIXEL_VIDEO_ROWS = ((0, 0), (13, 2), ("jsonl", 0))


def pixel_digest(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()[:16]


def image_toml(root: Path, index: int) -> str:
    resolution, bucket, no_upscale, batch, repeats = IMAGE_SETTINGS[index]
    return (
        f"[general]\nresolution = {resolution}\nenable_bucket = {str(bucket).lower()}\n"
        f"bucket_no_upscale = {str(no_upscale).lower()}\nbatch_size = {batch}\nnum_repeats = {repeats}\n"
        f'caption_extension = ".txt"\n\n[[datasets]]\nimage_directory = "{root.as_posix()}/images"\n'
        f'cache_directory = "{root.as_posix()}/cache_image_{index}"\n'
    )


def video_toml(root: Path, index: int, buckets: int) -> str:
    resolution, bucket, no_upscale, batch, repeats = VIDEO_BUCKETS[buckets]
    return (
        f"[general]\nresolution = {resolution}\nenable_bucket = {str(bucket).lower()}\n"
        f"bucket_no_upscale = {str(no_upscale).lower()}\nbatch_size = {batch}\nnum_repeats = {repeats}\n"
        f'caption_extension = ".txt"\n\n[[datasets]]\nvideo_directory = "{root.as_posix()}/videos"\n'
        f'cache_directory = "{root.as_posix()}/cache_video_{index}_{buckets}"\n{VIDEO_SETTINGS[index]}\n'
    )


def jsonl_toml(root: Path, index: int) -> str:
    return (
        f'[general]\nresolution = [128, 96]\n\n[[datasets]]\nvideo_jsonl_file = "{root.as_posix()}/videos.jsonl"\n'
        f'cache_directory = "{root.as_posix()}/cache_jsonl_{index}"\n{JSONL_SETTINGS[index]}\n'
    )


def write_media(root: Path) -> None:
    """The images and clips, each with a caption file."""
    (root / "images").mkdir(parents=True)
    for w, h in IMAGE_SIZES:
        path = root / "images" / f"img_{w}x{h}.png"
        Image.new("RGB", (w, h), (200, 40, 90)).save(path)
        path.with_suffix(".txt").write_text(f"an image {w}x{h}", encoding="utf-8")
    (root / "videos").mkdir()
    for name, (w, h, count) in CLIPS.items():
        path = root / "videos" / f"{name}.mp4"
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=24)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "10", "preset": "ultrafast", "threads": "1"}
            for i in range(count):
                frame = np.full((h, w, 3), GRAY_BASE + GRAY_STEP * i, dtype=np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        path.with_suffix(".txt").write_text(f"a clip {name}", encoding="utf-8")
    for name, (count, even, odd) in FRAME_FOLDERS.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            w, h = odd if i % 2 else even
            Image.new("RGB", (w, h), (GRAY_BASE + GRAY_STEP * i,) * 3).save(folder / f"{i:04d}.png")
        folder.with_suffix(".txt").write_text(f"frames {folder.name}", encoding="utf-8")
    lines = [{"video_path": str(root / "frames" / "jumps"), "caption": "jumps"}]
    lines.append({"video_path": str(root / "videos" / "wide.mp4"), "caption": "wide"})
    (root / "videos.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def frame_index(frame: np.ndarray) -> int:
    """Which clip frame a decoded (and resized) frame is: its gray level."""
    return round((float(frame.mean()) - GRAY_BASE) / GRAY_STEP)
