"""The previews a run wrote (output_dir/sample/), found by name, and a few frames of each as one image strip:
what the run report shows and what the trackers log as images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hv_common.atomic import is_temp_name
from hv_common.labels import preview_pattern

STRIP_FRAMES = 4  # frames of a video shown side by side: start, end and two between
STRIP_HEIGHT = 128  # pixels; a thumbnail, the file itself is linked


@dataclass(frozen=True)
class Preview:
    path: Path
    label: str  # "step00000060", "000002" (an epoch), "final"
    index: int  # the prompt's index in --sample_prompts
    seed: int


def parse_preview(path: Path, output_name: str | None = None) -> Preview | None:
    """A preview file's label, prompt index and seed from its name (`{output_name}_{label}_{index:02d}_{seed}`);
    None for another file. Without output_name the label keeps the name's prefix."""
    match = preview_pattern(output_name).match(path.name)
    if match is None or is_temp_name(path.name):
        return None
    return Preview(path, match["label"], int(match["index"]), int(match["seed"]))


def find_previews(sample_dir: Path, output_name: str | None) -> list[Preview]:
    """The previews PreviewSampler wrote, oldest first (a label's files are written together: the order of the
    report's rows)."""
    try:
        paths = [p for p in sample_dir.iterdir() if p.is_file()]
    except OSError:
        return []
    found = [(p.stat().st_mtime_ns, p.name, parse_preview(p, output_name)) for p in paths]
    return [preview for _, _, preview in sorted(found, key=lambda t: t[:2]) if preview is not None]


def frame_strip(path: Path, frames: int = STRIP_FRAMES, height: int = STRIP_HEIGHT) -> np.ndarray:
    """uint8 (H, W, 3): `frames` evenly spaced frames of a video side by side (an image: itself), `height`
    pixels high (never enlarged)."""
    from PIL import Image

    from hv_common.video_io import read_frames

    video = read_frames(path)
    picks = np.unique(np.linspace(0, len(video) - 1, min(frames, len(video))).round().astype(int))
    tiles = []
    for i in picks:
        image = Image.fromarray(video[i])
        if image.height > height:
            width = max(1, round(image.width * height / image.height))
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        tiles.append(np.asarray(image))
    gap = np.full((tiles[0].shape[0], 2, 3), 255, dtype=np.uint8)  # a white line between frames
    parts = [tiles[0]]
    for tile in tiles[1:]:
        parts += [gap, tile]
    return np.concatenate(parts, axis=1)


def log_preview_images(accelerator, paths: list[Path], step: int) -> None:
    """Each preview's frame strip to the trackers that take images (tensorboard, wandb), as `preview/NN` (NN: the
    prompt's index)."""
    images = {}
    for path in paths:
        preview = parse_preview(path)
        images[f"preview/{preview.index:02d}" if preview else f"preview/{path.stem}"] = frame_strip(path)
    for tracker in accelerator.trackers if images else ():
        if tracker.name == "tensorboard":
            tracker.log_images({k: v[None] for k, v in images.items()}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({k: [v] for k, v in images.items()}, step=step)
