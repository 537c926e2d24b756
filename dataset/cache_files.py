"""The cache files: one safetensors file per item and bucket (latents) and one per item (text embeddings).

Each file carries, in its safetensors header, what made it (source item, bucket, frame window, encoder identity,
caption hash), so `--skip_existing` can tell a valid file from a stale or torn one, and a person can tell
where a file came from. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save_file

from hv_common.atomic import atomic_write

LATENT_FORMAT = "hv_latents_v1"
TEXT_FORMAT = "hv_text_v1"


class CacheFileError(ValueError):
    """A cache file that is missing, torn or of another format: the message names the file."""


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_identity(path: str | Path) -> str:
    """A cheap identity for a model or media file: name, size and a hash of its first and last MiB."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]


def write_cache(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata)))


def read_metadata(path: Path) -> dict[str, str] | None:
    """The header metadata, or None when the file is missing, torn or not safetensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return None


def is_current(path: Path, expected: Mapping[str, str]) -> bool:
    """True when the file exists, reads, and was made from exactly what `expected` describes."""
    meta = read_metadata(path)
    return meta is not None and all(meta.get(k) == v for k, v in expected.items())


def _header_metadata(data: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def load_cache(path: Path, expected_format: str, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of a cache file, checked for format and keys.

    This is the training hot path: one read of the whole (small) file and an in-memory parse is about twice
    as fast as memory-mapping it through safe_open / load_file (bench/cache_read.py).
    """
    try:
        data = path.read_bytes()
        fmt = _header_metadata(data).get("format_version")
        tensors = load(data)
    except FileNotFoundError:
        raise CacheFileError(f"cache file missing: {path}") from None
    except (SafetensorError, OSError, ValueError, struct.error, AttributeError) as e:
        reason = " ".join(str(e).split())[:120]
        raise CacheFileError(f"corrupt cache file {path} ({reason}); rerun the cache command") from None
    if fmt != expected_format or not all(k in tensors for k in keys):
        raise CacheFileError(f"{path} is not a {expected_format} cache file; rerun the cache command")
    return tensors
