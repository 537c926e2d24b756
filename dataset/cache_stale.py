"""Cache files no item produces any more (a removed image, a changed target_frames or frame_extraction).

musubi-tuner's cache commands delete them at the end of a run unless --keep_cache; so do ours, with the same
flag. Only the dataset's architecture's files are touched (*_hv.safetensors, *_hv_te.safetensors): a Wan or
FramePack cache sharing the folder stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


def unused_files(cache_directory: Path, pattern: str, used: Iterable[str]) -> list[Path]:
    """Files in the folder matching `pattern` whose names are not in `used`."""
    keep = set(used)
    return sorted(p for p in cache_directory.glob(pattern) if p.is_file() and p.name not in keep)


def remove_stale(cache_directory: Path, pattern: str, produced: Iterable[str], keep_cache: bool) -> int:
    """Delete (or, with keep_cache, only list) the files no item produces; returns how many there were."""
    stale = unused_files(cache_directory, pattern, produced)
    for path in stale:
        if keep_cache:
            logger.info("keeping cache file no item produces (--keep_cache): %s", path)
        else:
            path.unlink(missing_ok=True)
            logger.info("removed cache file no item produces any more: %s", path)
    return len(stale)
