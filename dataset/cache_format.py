"""musubi-tuner's HunyuanVideo cache format, the one format both tools read and write.

Latent file:  one tensor `latents_{F}x{H}x{W}_{dtype}` shaped (C, F, H, W); metadata architecture=hunyuan_video,
              width / height = the source's original size, frame_count (videos), format_version.
Text file:    `llm_{dtype}` (256, D) padded, `llm_mask` (256,) int64, `clipL_{dtype}` (D2,), optionally
              `clipL_mask` (77,); metadata architecture=hunyuan_video, caption1, format_version.

musubi-tuner wrote format_version 1.0.0 until March 2025 and 1.0.1 since; for HunyuanVideo the two are the
same keys and names (the bump came with Wan). Everything here reads the safetensors header only (a few
hundred bytes), so every file of a dataset can be checked when a run starts.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from hv_common.dtypes import OPTION_TORCH_NAMES, TORCH_NAMES
from hv_common.errors import UserError

ARCHITECTURE_FULL = "hunyuan_video"
FORMAT_VERSION = "1.0.1"  # what we write: musubi-tuner's current version
READABLE_VERSIONS = ("1.0.0", "1.0.1")
OLD_FORMATS = {"hv_latents_v1": "cache_latents.py", "hv_text_v1": "cache_text_encoder_outputs.py"}

# safetensors dtype names -> torch's names, which musubi-tuner puts in its keys (dtype_to_str)
DTYPE_NAMES = TORCH_NAMES
FLOAT_NAMES = OPTION_TORCH_NAMES  # a cache holds what --vae_dtype / --text_encoder_dtype chose
LATENT_KEY = re.compile(r"^latents_(\d+)x(\d+)x(\d+)_(\w+)$")
MAX_HEADER_BYTES = 100 << 20

# musubi-tuner's long architecture names (dataset/architectures.py), for naming a file of another model
MUSUBI_ARCHITECTURES = {
    "hunyuan_video": "HunyuanVideo",
    "wan": "Wan",
    "framepack": "FramePack",
    "flux_kontext": "FLUX.1 Kontext",
    "flux_2_dev": "FLUX.2 dev",
    "qwen_image": "Qwen-Image",
    "qwen_image_edit": "Qwen-Image-Edit",
    "kandinsky5": "Kandinsky 5",
    "hunyuan_video_1_5": "HunyuanVideo 1.5",
    "z_image": "Z-Image",
}

# latent shape rules of the HunyuanVideo VAE: 8x spatial, 4x temporal (plus the first frame)
SPATIAL_FACTOR, TEMPORAL_FACTOR = 8, 4


class CacheFileError(UserError):
    """A cache file that is missing, torn, of another format or not what its name promises: names the file."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error comes back as "Caught CacheFileError in DataLoader worker ... Traceback
        # ... CacheFileError: <message>": keep the message, the one line the user needs.
        if message.startswith("Caught CacheFileError") and "CacheFileError: " in message:
            message = message.rsplit("CacheFileError: ", 1)[1]
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # torch's name: float16, int64, ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class CacheHeader:
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]


def read_header(path: Path) -> CacheHeader:
    """The safetensors header, checked against the file's size (a truncated file fails here, cheaply)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CacheFileError(f"corrupt cache file {path}: {size} bytes, too short for safetensors")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise CacheFileError(
                    f"corrupt cache file {path}: its header claims {length} bytes, not safetensors"
                )
            raw = json.loads(f.read(length))
    except FileNotFoundError:
        raise CacheFileError(f"cache file missing: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CacheFileError(f"corrupt cache file {path}: its header is not JSON, not safetensors") from None
    if not isinstance(raw, dict):
        raise CacheFileError(f"corrupt cache file {path}: its header is not a JSON object")
    meta = raw.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    try:
        for name, entry in raw.items():
            start, stop = entry["data_offsets"]
            tensors[name] = TensorInfo(DTYPE_NAMES.get(entry["dtype"], entry["dtype"]), tuple(entry["shape"]))
            end = max(end, int(stop))
    except (KeyError, TypeError, ValueError):
        raise CacheFileError(f"corrupt cache file {path}: malformed tensor entry {name!r}") from None
    if size < 8 + length + end:
        raise CacheFileError(
            f"corrupt cache file {path}: truncated ({size} bytes, its header describes {8 + length + end})"
        )
    return CacheHeader({str(k): str(v) for k, v in meta.items()}, tensors)


def describe(header: CacheHeader) -> str:
    """What a readable safetensors file is, in words, for an error message."""
    meta = header.metadata
    fmt, arch = meta.get("format_version"), meta.get("architecture")
    if fmt in OLD_FORMATS:
        return f"an hv-lora-trainer cache in the old {fmt} format"
    if arch is not None:
        name = MUSUBI_ARCHITECTURES.get(arch, arch)
        kind = "latent" if any(k.startswith("latents_") for k in header.tensors) else "text-encoder"
        return f"a musubi-tuner {name} {kind} cache (architecture {arch!r}, format_version {fmt})"
    keys = ", ".join(sorted(header.tensors)[:4])
    return f"a safetensors file that is no HunyuanVideo cache (keys: {keys})"


def check_hunyuan(path: Path, header: CacheHeader, command: str) -> None:
    """Refuse, naming what it is, a file that is not a HunyuanVideo cache of musubi-tuner's format."""
    meta = header.metadata
    fmt = meta.get("format_version")
    if fmt in OLD_FORMATS:
        raise CacheFileError(
            f"{path} is {describe(header)}, which this version no longer reads; rerun {OLD_FORMATS[fmt]} "
            "(it writes musubi-tuner's format, and removes files no item produces unless --keep_cache)"
        )
    if meta.get("architecture") != ARCHITECTURE_FULL:
        raise CacheFileError(f"{path} is {describe(header)}, not a HunyuanVideo cache; rerun {command}")
    if fmt not in READABLE_VERSIONS:
        raise CacheFileError(
            f"{path} is a HunyuanVideo cache of format_version {fmt}, which this version does not know "
            f"(it reads {', '.join(READABLE_VERSIONS)}); rerun {command}"
        )


def latent_key(header: CacheHeader, path: Path) -> str:
    keys = [k for k in header.tensors if LATENT_KEY.match(k)]
    if len(keys) != 1:
        raise CacheFileError(
            f"{path} holds {len(keys)} latents_FxHxW_dtype tensors, not 1; rerun cache_latents.py"
        )
    return keys[0]


def dtype_key(header: CacheHeader, base: str, path: Path, command: str) -> str:
    """The key `{base}_{dtype}` of a float tensor (musubi-tuner puts the dtype in the name)."""
    keys = [f"{base}_{d}" for d in FLOAT_NAMES if f"{base}_{d}" in header.tensors]
    if len(keys) != 1:
        found = ", ".join(sorted(header.tensors))
        raise CacheFileError(f"{path} has no single {base}_<dtype> tensor (it has: {found}); rerun {command}")
    return keys[0]


def expected_latent_shape(width: int, height: int, frames: int) -> tuple[int, int, int]:
    """(F, H, W) of the latents of a (width x height, frames) bucket."""
    return (frames - 1) // TEMPORAL_FACTOR + 1, height // SPATIAL_FACTOR, width // SPATIAL_FACTOR
