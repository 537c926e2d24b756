"""The cache files, in musubi-tuner's HunyuanVideo format (dataset/cache_format.py): write, check, read.

Besides musubi-tuner's metadata, the files we write carry what made them (source identity, VAE / encoders,
seed, caption hash), so `--skip_existing` can tell a current file from a stale one; musubi-tuner ignores
those keys. Writes are atomic. A file is checked twice: its header when a run starts (shape and dtype
against its name and its item's bucket, cheap), its values the first time it is read (finite).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save_file

from hv_common.atomic import atomic_write
from hv_common.dtypes import safetensors_to_torch

from .cache_format import (
    ARCHITECTURE_FULL,
    FORMAT_VERSION,
    LATENT_KEY,
    CacheFileError,
    CacheHeader,
    check_hunyuan,
    dtype_key,
    expected_latent_shape,
    latent_key,
    read_header,
)
from .cache_names import LatentCacheName

__all__ = [
    "CacheFileError",
    "file_identity",
    "is_current",
    "load_latents",
    "load_text",
    "read_metadata",
    "text_digest",
    "write_latent_cache",
    "write_text_cache",
    "check_latent_file",
    "check_text_file",
]

LATENT_COMMAND, TEXT_COMMAND = "cache_latents.py", "cache_text_encoder_outputs.py"


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


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")  # musubi-tuner's dtype_to_str


def _write(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], what: str) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    for key, value in tensors.items():  # musubi-tuner zeroes NaNs with a warning; we refuse to store them
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CacheFileError(
                f"{what}: the encoder produced non-finite values ({key}); nothing written to {path} "
                "(a float16 overflow? try --vae_dtype / --text_encoder_dtype float32 or bfloat16)"
            )
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata)))


def write_latent_cache(
    path: Path,
    latent: torch.Tensor,
    original_size: tuple[int, int],
    frame_count: int | None,
    extra: Mapping[str, str],
    what: str = "",
) -> None:
    """latent (C, F, H, W); original_size (width, height) of the source; frame_count for a video window."""
    _, f, h, w = latent.shape
    meta = {
        "architecture": ARCHITECTURE_FULL,
        "width": str(original_size[0]),
        "height": str(original_size[1]),
        "format_version": FORMAT_VERSION,
        **({"frame_count": str(frame_count)} if frame_count else {}),
    }
    _write(path, {f"latents_{f}x{h}x{w}_{_dtype_name(latent)}": latent}, {**extra, **meta}, what or str(path))


def write_text_cache(
    path: Path,
    llm: torch.Tensor,
    llm_mask: torch.Tensor,
    clip_pooled: torch.Tensor,
    caption: str,
    extra: Mapping[str, str],
) -> None:
    """llm (256, D) padded as the encoder returned it, llm_mask (256,), clip_pooled (D2,): musubi-tuner's keys."""
    tensors = {
        f"llm_{_dtype_name(llm)}": llm,
        "llm_mask": llm_mask.to(torch.int64),
        f"clipL_{_dtype_name(clip_pooled)}": clip_pooled,
    }
    meta = {"architecture": ARCHITECTURE_FULL, "caption1": caption, "format_version": FORMAT_VERSION}
    _write(path, tensors, {**extra, **meta}, str(path))


def read_metadata(path: Path) -> dict[str, str] | None:
    """The header metadata, or None when the file is missing, torn or not safetensors."""
    try:
        return read_header(path).metadata
    except (CacheFileError, OSError):
        return None


def is_current(path: Path, expected: Mapping[str, str], check=None) -> bool:
    """True when the file reads and was made from exactly what `expected` describes. A file musubi-tuner
    made (none of our provenance keys) counts as current when `check(path)` passes: its caches are kept."""
    meta = read_metadata(path)
    if meta is None or meta.get("architecture") != ARCHITECTURE_FULL:  # torn, old format, other model
        return False
    ours = [k for k in expected if k not in ("format_version", "architecture", "caption1")]
    if check is not None and not any(k in meta for k in ours):
        try:
            check(path)
        except CacheFileError:
            return False
        return all(meta.get(k) == v for k, v in expected.items() if k == "caption1")
    return all(meta.get(k) == v for k, v in expected.items())


def check_latent_file(
    path: Path, name: LatentCacheName | None = None, bucket: tuple[int, int, int] | None = None
) -> tuple[int, ...]:
    """Header check of a latent file: musubi-tuner's format, its key matching its tensor, and what its name
    and its item's (width, height, frames) bucket promise. Returns the latent shape (C, F, H, W)."""
    header = read_header(path)
    check_hunyuan(path, header, LATENT_COMMAND)
    key = latent_key(header, path)
    match = LATENT_KEY.match(key)
    assert match is not None
    fhw, dtype = tuple(int(match[i]) for i in (1, 2, 3)), match[4]
    info = header.tensors[key]
    if len(info.shape) != 4 or info.shape[1:] != fhw or info.dtype != dtype:
        raise CacheFileError(
            f"{path}: tensor {key} is {info.dtype} {list(info.shape)}, not what its key says; "
            f"the file is damaged; rerun {LATENT_COMMAND}"
        )
    if bucket is not None and fhw != expected_latent_shape(*bucket):
        w, h, frames = bucket
        raise CacheFileError(
            f"{path} holds latents of {fhw[0]}x{fhw[1]}x{fhw[2]} (frames x height x width), but its item's "
            f"bucket ({w}x{h}, {frames} frames) needs {'x'.join(map(str, expected_latent_shape(*bucket)))}: the "
            f"file belongs to another item or to other settings (copied over?); rerun {LATENT_COMMAND}"
        )
    if name is not None:
        _check_name_promise(path, header, name)
    return info.shape


def _check_name_promise(path: Path, header: CacheHeader, name: LatentCacheName) -> None:
    meta = header.metadata
    said = {"width": str(name.width), "height": str(name.height)}
    if name.frame_count is not None:
        said["frame_count"] = str(name.frame_count)
    if "item_key" in meta:  # ours carry it; musubi-tuner's files do not
        said["item_key"] = name.item_key
    wrong = [f"{k} {meta.get(k)} (the name says {v})" for k, v in said.items() if k in meta and meta[k] != v]
    if wrong:
        raise CacheFileError(
            f"{path} was made for another item: its metadata has {', '.join(wrong)} "
            f"(copied over another file?); rerun {LATENT_COMMAND}"
        )


def check_text_file(path: Path) -> tuple[int, ...]:
    """Header check of a text-encoder file; returns the LLM states' shape (L, D)."""
    header = read_header(path)
    check_hunyuan(path, header, TEXT_COMMAND)
    llm = header.tensors[dtype_key(header, "llm", path, TEXT_COMMAND)]
    clip = header.tensors[dtype_key(header, "clipL", path, TEXT_COMMAND)]
    mask = header.tensors.get("llm_mask")
    if len(llm.shape) != 2 or len(clip.shape) != 1 or mask is None or mask.shape != llm.shape[:1]:
        raise CacheFileError(
            f"{path}: expected llm (L, D), llm_mask (L,) and clipL (D,), found llm {list(llm.shape)}, "
            f"llm_mask {list(mask.shape) if mask else 'missing'}, clipL {list(clip.shape)}; rerun {TEXT_COMMAND}"
        )
    return llm.shape


def _read_tensors(path: Path, command: str) -> dict[str, torch.Tensor]:
    """The whole file in one read, parsed in memory: about twice as fast as memory-mapping small files
    through safe_open (bench/cache_read.py). This is the training hot path."""
    try:
        return load(path.read_bytes())
    except FileNotFoundError:
        raise CacheFileError(f"cache file missing: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:120]
        raise CacheFileError(f"corrupt cache file {path} ({reason}); rerun {command}") from None


def _finite(path: Path, key: str, t: torch.Tensor, command: str) -> torch.Tensor:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise CacheFileError(
            f"{path}: {bad} of the {t.numel()} values of {key} are NaN or infinite; the file is "
            f"damaged; rerun {command} for it (delete it first)"
        )
    return t


def load_latents(path: Path, check: bool = True) -> torch.Tensor:
    """The (C, F, H, W) latents of a cache file; `check`: that they are finite (the first read of a file)."""
    tensors = _read_tensors(path, LATENT_COMMAND)
    keys = [k for k in tensors if LATENT_KEY.match(k)]
    if len(keys) != 1:
        raise CacheFileError(f"{path} holds no latents_FxHxW_dtype tensor; rerun {LATENT_COMMAND}")
    latents = tensors[keys[0]]
    return _finite(path, keys[0], latents, LATENT_COMMAND) if check else latents


def load_text(path: Path, check: bool = True) -> dict[str, torch.Tensor]:
    """llm (the prompt's tokens only: the loader pads per batch) and clip_pooled; `check`: that they are finite.

    Only the bytes the prompt needs are read (header, mask, the prompt's rows of llm, clip): the shared format
    pads every caption to 256 tokens, and reading past the prompt would cost our former unpadded files' read
    speed (bench/cache_read.py)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            entries = json.loads(f.read(length))
            base = 8 + length
            llm_key = next((k for k in sorted(entries) if k.startswith("llm_") and k != "llm_mask"), None)
            clip_key = next(
                (k for k in sorted(entries) if k.startswith("clipL_") and k != "clipL_mask"), None
            )
            if llm_key is None or clip_key is None or "llm_mask" not in entries:
                raise CacheFileError(
                    f"{path} lacks llm_<dtype>, llm_mask or clipL_<dtype>; rerun {TEXT_COMMAND}"
                )
            mask = _read_entry(f, base, entries["llm_mask"]).bool()
            valid = int(mask.sum())
            if bool(mask[:valid].all()):  # right padding (every tokenizer's): the first rows are the prompt
                llm = _read_entry(f, base, entries[llm_key], rows=valid)
            else:
                llm = _read_entry(f, base, entries[llm_key])[mask]
            clip = _read_entry(f, base, entries[clip_key])
    except FileNotFoundError:
        raise CacheFileError(f"cache file missing: {path}") from None
    except (OSError, ValueError, KeyError, TypeError, struct.error, RuntimeError) as e:
        if isinstance(e, CacheFileError):
            raise
        reason = " ".join(str(e).split())[:120]
        raise CacheFileError(f"corrupt cache file {path} ({reason}); rerun {TEXT_COMMAND}") from None
    if check:
        _finite(path, llm_key, llm, TEXT_COMMAND)
        _finite(path, clip_key, clip, TEXT_COMMAND)
    return {"llm": llm, "clip_pooled": clip}


# musubi-tuner's caches hold no float8: a float8 tensor where a float or a mask belongs is a corrupt file
_TORCH_DTYPES = safetensors_to_torch(float8=False)


def _read_entry(f, base: int, entry: dict, rows: int | None = None) -> torch.Tensor:
    """One tensor of an open safetensors file (or its first `rows` rows), read with one seek and one read."""
    dtype, shape = _TORCH_DTYPES[entry["dtype"]], list(entry["shape"])
    start, stop = entry["data_offsets"]
    if rows is not None:
        shape[0] = rows
    size = math.prod(shape) * dtype.itemsize
    if size > stop - start:
        raise ValueError(f"tensor shorter than its shape {shape}")
    f.seek(base + start)
    data = bytearray(f.read(size))
    if len(data) != size:
        raise ValueError("truncated")
    return torch.frombuffer(data, dtype=dtype).reshape(shape) if size else torch.empty(shape, dtype=dtype)


def text_length(path: Path) -> int:
    """The valid LLM token count of a text file, from its mask alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.get_tensor("llm_mask").sum())
    except (SafetensorError, OSError, ValueError):  # a full read names the problem
        return int(load_text(path)["llm"].shape[0])
