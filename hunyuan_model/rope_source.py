"""Where a DiT's RoPE split (the head width given to t, h and w) comes from: the file, where the file says it.

Shapes do not hold the split, so a wrong one loads silently and shifts every output a little. Files say it in
two ways: a diffusers folder's `config.json` (`rope_axes_dim`), and the `hv_rope_dim_list` metadata key of the
safetensors DiT files this project writes (`python -m hunyuan_model.tiny`, `merge_lora.py`). Without either,
the split is derived from the head width (`config.rope_dims_for`) and, once the file has loaded, logged once per
width.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .config import rope_dims_for
from .errors import CheckpointError

ROPE_METADATA_KEY = "hv_rope_dim_list"  # safetensors metadata: JSON list, e.g. "[16, 56, 56]"
DIFFUSERS_ROPE_KEY = "rope_axes_dim"  # diffusers' HunyuanVideoTransformer3DModel config

logger = logging.getLogger(__name__)
_logged_widths: set[int] = set()


def rope_metadata(rope_dims: tuple[int, int, int]) -> dict[str, str]:
    """The metadata entry that records a split in a safetensors DiT we write."""
    return {ROPE_METADATA_KEY: json.dumps(list(rope_dims))}


def read_rope_split(path: str | Path) -> tuple[int, int, int] | None:
    """The split a DiT file or folder states, or None where it states none (a .pt file, other tools' files).

    A folder: its config.json (diffusers) first, else the metadata of its first safetensors shard.
    """
    path = Path(path)
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get(DIFFUSERS_ROPE_KEY)
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{config}: not a readable diffusers config ({type(e).__name__})") from None
        if value is not None:
            return _checked(value, f"{config}: {DIFFUSERS_ROPE_KEY}")
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files or files[0].suffix != ".safetensors":
        return None
    try:
        with safe_open(str(files[0]), framework="pt") as f:
            raw = (f.metadata() or {}).get(ROPE_METADATA_KEY)
    except (SafetensorError, OSError, RuntimeError, ValueError):
        return None  # an unreadable file is reported by the loader, with its own message
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return _checked(value, f"{files[0]}: metadata {ROPE_METADATA_KEY}")


def _checked(value: object, where: str) -> tuple[int, int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 3:
        t, h, w = value
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % 2 == 0 for v in (t, h, w)):
            return (t, h, w)
    raise CheckpointError(f"{where} is {str(value)[:80]}: expected three positive even integers (t, h, w)")


def rope_split(head_dim: int, stated: tuple[int, int, int] | None, source: str) -> tuple[int, int, int]:
    """The stated split (checked against the head width), or the one derived from the width."""
    if stated is None:
        return rope_dims_for(head_dim)
    if sum(stated) != head_dim:
        raise CheckpointError(
            f"{source}: the stated RoPE split {list(stated)} sums to {sum(stated)}, not the head width {head_dim}"
        )
    return stated


def log_if_derived(head_dim: int, stated: tuple[int, int, int] | None, source: str) -> None:
    """Say once per head width which split a file that states none was given. Called once the file has loaded
    (or merged): a file refused for another reason gets its one error line and nothing else."""
    if stated is not None or head_dim in _logged_widths:
        return
    _logged_widths.add(head_dim)
    logger.info(
        "%s states no RoPE split: using %s for head width %d (HunyuanVideo's rule; a file says its own with "
        "%s in config.json or %s in its metadata)",
        source,
        list(rope_dims_for(head_dim)),
        head_dim,
        DIFFUSERS_ROPE_KEY,
        ROPE_METADATA_KEY,
    )
