"""List a dataset's media files with their captions, from a directory (+ caption files) or a JSONL file.

Nothing is decoded here: listing is cheap, so load_dataset_config runs it to name a missing caption, an
empty directory or a bad JSONL line before any work starts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .config import DatasetConfig, DatasetOrigin, resolve_path

logger = logging.getLogger(__name__)

# musubi-tuner's lists. It globs "*" + each of them, so the match is case-sensitive (".Jpg" is not taken) and
# names starting with a dot (macOS's "._clip.mp4") are skipped: the same files are taken here.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")
_MATCHED = {
    False: frozenset(IMAGE_EXTENSIONS) | {e.upper() for e in IMAGE_EXTENSIONS},
    True: frozenset(VIDEO_EXTENSIONS) | {e.upper() for e in VIDEO_EXTENSIONS},
}


def is_listed(path: Path, is_video: bool) -> bool:
    """Whether musubi-tuner's glob takes this name as an image (or a video)."""
    return path.suffix in _MATCHED[is_video] and not path.name.startswith(".")


def frame_files(folder: Path) -> list[Path]:
    """The images of a folder of frames, in musubi-tuner's order (sorted by name): one video."""
    return sorted(p for p in folder.iterdir() if is_listed(p, is_video=False) and p.is_file())


@dataclass(frozen=True)
class MediaEntry:
    """One image or video and its caption. item_key is the file's stem, unique within its dataset."""

    item_key: str
    path: Path
    caption: str


def list_media(dataset: DatasetConfig) -> list[MediaEntry]:
    """The dataset's media, sorted by file name (directory) or in file order (JSONL)."""
    key = dataset.source_key
    source = getattr(dataset, key)
    if key.endswith("_directory"):
        entries = _from_directory(
            source, dataset.caption_extension or "", dataset.is_video, dataset.origin, key
        )
    else:
        entries = _from_jsonl(source, dataset.is_video, dataset.origin, key)
    _check_unique_keys(entries, dataset.origin, key)
    return entries


def _from_directory(
    directory: Path, caption_ext: str, is_video: bool, origin: DatasetOrigin, key: str
) -> list[MediaEntry]:
    extensions = VIDEO_EXTENSIONS if is_video else IMAGE_EXTENSIONS
    # a folder named like a video ("clip.mp4/") is a folder of frames to musubi-tuner: one video
    media = sorted(
        p for p in directory.iterdir() if is_listed(p, is_video) and (p.is_file() or is_video and p.is_dir())
    )
    if not media:
        kind = "videos" if is_video else "images"
        raise origin.error(key, f"no {kind} in {directory} (looked for {' '.join(extensions)})")
    captions = [p.parent / (p.stem + caption_ext) for p in media]
    missing = [(m, c) for m, c in zip(media, captions, strict=True) if not c.is_file()]
    if missing:
        (first, caption), more = missing[0], len(missing) - 1
        also = f" (and {more} more without a caption)" if more else ""
        raise origin.error(key, f"{first.name} has no caption: {caption} not found{also}")
    return [
        MediaEntry(m.stem, m, _read_caption(c, origin, key)) for m, c in zip(media, captions, strict=True)
    ]


def _read_caption(path: Path, origin: DatasetOrigin, key: str) -> str:
    try:
        caption = path.read_text(encoding="utf-8-sig").strip()  # -sig: drop a BOM that Windows editors add
    except (OSError, UnicodeDecodeError) as e:
        raise origin.error(key, f"cannot read caption {path}: {e}") from None
    if not caption:
        logger.warning(f"{origin.config_file}: {origin.where(key)}: empty caption in {path}")
    return caption


def _from_jsonl(jsonl: Path, is_video: bool, origin: DatasetOrigin, key: str) -> list[MediaEntry]:
    path_key = "video_path" if is_video else "image_path"
    try:
        lines = jsonl.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise origin.error(key, f"cannot read {jsonl}: {e}") from None
    entries = [
        _jsonl_entry(line, path_key, f"{jsonl} line {n}", origin, key)
        for n, line in enumerate(lines, 1)
        if line.strip()
    ]
    if not entries:
        raise origin.error(key, f"{jsonl} has no entries")
    return entries


def _jsonl_entry(line: str, path_key: str, where: str, origin: DatasetOrigin, key: str) -> MediaEntry:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise origin.error(key, f"{where}: invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(record, dict):
        raise origin.error(key, f'{where}: expected an object like {{"{path_key}": "...", "caption": "..."}}')
    for field in (path_key, "caption"):
        if not isinstance(record.get(field), str):
            problem = "missing" if field not in record else f"not a string: {record[field]!r}"
            raise origin.error(key, f'{where}: "{field}" {problem}')
    # relative media paths resolve like every other path: against the current directory (musubi-tuner's rule)
    path = resolve_path(record[path_key], origin.base_dir)
    if not (path.is_file() or (path_key == "video_path" and path.is_dir())):  # a folder of frames is a video
        problem = (
            "is a folder (only a video_path may be a folder of frames)" if path.is_dir() else "not found"
        )
        raise origin.error(key, f"{where}: {path_key} {problem}: {path}")
    return MediaEntry(path.stem, path, record["caption"].strip())


def _check_unique_keys(entries: list[MediaEntry], origin: DatasetOrigin, key: str) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.item_key in seen:
            raise origin.error(
                key,
                f"{seen[entry.item_key]} and {entry.path} have the same name {entry.item_key!r}; "
                "cache files are named by it, so rename one",
            )
        seen[entry.item_key] = entry.path
