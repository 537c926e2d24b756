"""Run musubi-tuner's own dataset code on the parity inputs and print the outcomes
tests/dataset/test_dataset_musubi_parity.py holds.

Not a test (pytest does not collect it) and not run by CI: it needs musubi-tuner's code and dependencies,
in a separate virtual environment, and is run once by hand when the table is (re)made:

    python3 -m venv ../musubi-venv
    ../musubi-venv/bin/pip install torch==2.13.0 numpy pillow opencv-python-headless av toml voluptuous safetensors
    PYTHONPATH=../musubi-tuner/src:tests/helpers ../musubi-venv/bin/python tests/helpers/derive_musubi_table.py > /tmp/table.py

(../musubi-tuner: a musubi-tuner checkout, main at commit 30c658c.) The TOML files go through musubi-tuner's loader
(config_utils.load_user_config, its schema and defaults), the media through its caching iterator
(retrieve_latent_cache_batches: buckets, resizing, frame windows) and its training-side batching
(prepare_for_training on cache files named as it names them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch
from musubi_parity_spec import (
    IMAGE_SETTINGS,
    JSONL_SETTINGS,
    PIXEL_IMAGE_SETTINGS,
    PIXEL_VIDEO_ROWS,
    VIDEO_BUCKETS,
    VIDEO_SETTINGS,
    frame_index,
    image_toml,
    jsonl_toml,
    pixel_digest,
    video_toml,
    write_media,
)
from musubi_tuner.dataset import config_utils
from safetensors.torch import save_file


def _dataset(toml_text: str, root: Path, name: str):
    path = root / f"{name}.toml"
    path.write_text(toml_text, encoding="utf-8")
    user_config = config_utils.load_user_config(str(path))
    blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(
        user_config, argparse.Namespace(debug_dataset=False), architecture="hv"
    )
    (dataset,) = config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group).datasets
    return dataset


def _items(dataset) -> list:
    return [item for _, batch in dataset.retrieve_latent_cache_batches(num_workers=1) for item in batch]


def _batches(dataset, items: list) -> tuple[int, int]:
    """musubi-tuner's batches per epoch and items per epoch, from cache files named as it names them."""
    os.makedirs(dataset.cache_directory, exist_ok=True)
    for item in items:
        save_file({"latents": torch.zeros(1)}, item.latent_cache_path)
    stems = {
        Path(item.item_key).stem.split("_")[0] for item in items
    }  # clip names have no "_"; images: below
    media = getattr(dataset, "image_directory", None)
    stems |= {caption.stem for caption in Path(media).glob("*.txt")} if media else set()
    for stem in stems:  # the text-encoder cache: one file per media file
        save_file({"te": torch.zeros(1)}, os.path.join(dataset.cache_directory, f"{stem}_hv_te.safetensors"))
    dataset.prepare_for_training()
    return len(dataset.batch_manager), dataset.num_train_items


def image_outcome(root: Path, index: int) -> dict:
    dataset = _dataset(image_toml(root, index), root, f"image_{index}")
    items = _items(dataset)
    buckets, pixels = {}, {}
    for item in items:
        height, width = item.content.shape[:2]
        assert item.bucket_size[:2] == (width, height)
        buckets[Path(item.item_key).stem] = (width, height)
        pixels[Path(item.item_key).stem] = pixel_digest(item.content)
    outcome = {"buckets": dict(sorted(buckets.items())), "batches": _batches(dataset, items)}
    if index in PIXEL_IMAGE_SETTINGS:
        outcome["pixels"] = dict(sorted(pixels.items()))
    return outcome


def video_outcome(root: Path, index: int, buckets: int) -> dict:
    return _video_outcome(
        root, video_toml(root, index, buckets), f"video_{index}_{buckets}", (index, buckets)
    )


def _video_outcome(root: Path, toml_text: str, name: str, row: object) -> dict:
    dataset = _dataset(toml_text, root, name)
    items = _items(dataset)
    clips: dict[str, dict] = {}
    pixels = {}
    for item in items:
        body = Path(item.item_key).stem  # "{clip}_{start:05d}-{frames:03d}"
        clip, window = body.rsplit("_", 1)
        start, count = (int(v) for v in window.split("-"))
        frames, height, width = item.content.shape[:3]
        assert frames == count and item.bucket_size == (width, height, count)
        sources = [frame_index(f) for f in item.content]
        pixels[(clip, start, count)] = pixel_digest(item.content)
        entry = clips.setdefault(clip, {"bucket": (width, height), "windows": []})
        assert entry["bucket"] == (width, height)
        # the source frames are written out only where they are not start, start + 1, ... (source_fps)
        same = sources == list(range(start, start + count))
        entry["windows"].append((start, count) if same else (start, count, tuple(sources)))
    for entry in clips.values():  # a window met twice (uniform) is one cache file: one training item
        entry["windows"] = sorted(set(entry["windows"]))
    outcome = {"clips": dict(sorted(clips.items())), "batches": _batches(dataset, items)}
    if row in PIXEL_VIDEO_ROWS:
        outcome["pixels"] = dict(sorted(pixels.items()))
    return outcome


def main() -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_media(root)
        images = [image_outcome(root, i) for i in range(len(IMAGE_SETTINGS))]
        videos = {
            (i, b): video_outcome(root, i, b)
            for i in range(len(VIDEO_SETTINGS))
            for b in range(len(VIDEO_BUCKETS))
        }
        jsonl = [
            _video_outcome(root, jsonl_toml(root, i), f"jsonl_{i}", ("jsonl", i))
            for i in range(len(JSONL_SETTINGS))
        ]
    sys.stdout.write("MUSUBI_IMAGES = [\n")
    for outcome in images:
        sys.stdout.write(f"    {outcome!r},\n")
    sys.stdout.write("]\nMUSUBI_VIDEOS = {\n")
    for key, outcome in videos.items():
        sys.stdout.write(f"    {key!r}: {outcome!r},\n")
    sys.stdout.write("}\nMUSUBI_JSONL = [\n")
    for outcome in jsonl:
        sys.stdout.write(f"    {outcome!r},\n")
    sys.stdout.write("]\n")


if __name__ == "__main__":
    main()
