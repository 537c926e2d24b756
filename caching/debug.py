"""cache_latents.py --debug_mode: the dataset's items shown instead of cached, as musubi-tuner shows them.

image: the first and last frame of each item (the item itself for an image) as PNGs in
<cache_directory>/debug_images/ (musubi-tuner opens an OpenCV window per image; a training rig is usually
headless, so the files are written and their folder named). console: the same frames as text art in the
terminal (ascii-magic, as musubi-tuner), interactive unless --console_num_images. video: each window as an .mp4
(an image as a .jpg) named after its cache file, in the cache directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from caching.options import LatentDebugOptions
from dataset.config import DatasetConfig
from dataset.items import ItemRecord
from hv_common.errors import UserError

logger = logging.getLogger(__name__)

DEBUG_IMAGE_FOLDER = "debug_images"
QUIT, NEXT_DATASET = "q", "d"


def _shown_frames(record: ItemRecord) -> list[np.ndarray]:
    """musubi-tuner shows an image, or a video window's first and last frame."""
    frames = record.frames
    return [frames[0]] if len(frames) == 1 else [frames[0], frames[-1]]


def _stem(record: ItemRecord) -> str:
    return Path(record.latent_cache_name).stem


def _save_images(dataset: DatasetConfig, record: ItemRecord) -> None:
    from hv_common.video_io import write_png

    folder = dataset.cache_directory / DEBUG_IMAGE_FOLDER
    frames = _shown_frames(record)
    for index, frame in enumerate(frames):
        suffix = "" if len(frames) == 1 else ("_first", "_last")[index]
        path = write_png(frame, folder / f"{_stem(record)}{suffix}.png")
        print(f"Saved image: {path}")


def _save_video(dataset: DatasetConfig, record: ItemRecord) -> None:
    from PIL import Image

    from hv_common.atomic import atomic_write
    from hv_common.video_io import write_mp4

    stem = dataset.cache_directory / _stem(record)
    if not record.is_video:
        path = stem.with_suffix(".jpg")
        atomic_write(path, lambda tmp: Image.fromarray(record.frames[0]).save(tmp, format="JPEG"))
        print(f"Saved image: {path}")
        return
    print(f"Number of images: {len(record.frames)}")
    print(f"Saved video: {write_mp4(record.frames, stem.with_suffix('.mp4'))}")  # 24 fps, as musubi-tuner


def console_printer(options: LatentDebugOptions):
    """A function that prints one frame as text art; a missing ascii-magic or a bad --console_back is one
    line, before any item is read."""
    try:
        from ascii_magic import Back, from_pillow_image  # type: ignore[import-not-found]  # optional
    except ImportError:
        raise UserError("--debug_mode console needs ascii-magic: pip install ascii-magic") from None
    back = None
    if options.console_back is not None:
        back = Back.__members__.get(options.console_back.upper())
        if back is None:
            names = ", ".join(name.lower() for name in Back.__members__)
            raise UserError(f"--console_back {options.console_back}: unknown; one of {names}")

    def show(frame: np.ndarray) -> None:
        from PIL import Image

        from_pillow_image(Image.fromarray(frame)).to_terminal(columns=options.console_width, back=back)

    return show


def show_datasets(datasets: list[DatasetConfig], records_of, options: LatentDebugOptions) -> None:
    """Each dataset's items in the chosen mode. `records_of(dataset)` yields its records."""
    printer = console_printer(options) if options.debug_mode == "console" else None
    interactive = printer is not None and options.console_num_images is None
    if interactive:
        print("d: next dataset, q: quit")
    for index, dataset in enumerate(datasets):
        print(f"Dataset [{index}]")
        if _show_dataset(dataset, records_of(dataset), options, printer, interactive) == QUIT:
            return
        if options.debug_mode == "image":
            print(f"Debug images of dataset [{index}] are in {dataset.cache_directory / DEBUG_IMAGE_FOLDER}")


def _show_dataset(dataset, records: Iterator[ItemRecord], options, printer, interactive: bool) -> str | None:
    shown = 0
    for record in records:
        w, h, f = record.bucket
        print(f"{record.item_key}: bucket {w}x{h}x{f}, frames from {record.start_frame}")
        if options.debug_mode == "image":
            _save_images(dataset, record)
        elif options.debug_mode == "video":
            _save_video(dataset, record)
        else:
            for frame in _shown_frames(record):
                printer(frame)
            shown += 1
            if interactive:
                try:
                    key = input("Press q to quit, d to next dataset, other key to next: ")
                except EOFError:  # no terminal to answer: stop, as q would
                    return QUIT
                if key in (QUIT, NEXT_DATASET):
                    return key
            elif shown == options.console_num_images:
                return NEXT_DATASET
    return None
