"""A DiT checkpoint of any layout, seen in the original layout and read one tensor at a time.

For streaming work on the 13 B model (merging a LoRA into it): only the tensor in hand is in memory.
safetensors are read through `safe_open`, the official `.pt` is memory-mapped; diffusers' split q, k, v
(+ MLP-in) are concatenated per tensor as `diffusers_to_original` does for a whole state dict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .checkpoint import (
    SAFETENSORS_DTYPES,
    detect_layout,
    one_line,
    read_torch_file,
    safetensors_files,
    strip_prefix,
)
from .diffusers_layout import maps_for_keys
from .errors import CheckpointError


class LazyDiT(contextlib.AbstractContextManager):
    """`with LazyDiT(path) as dit:` then `dit.keys()`, `dit.meta(key)` (shape, dtype) and `dit.get(key)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"DiT checkpoint not found: {self.path}")
        self._stack = contextlib.ExitStack()
        # raw key -> the safe_open handle that holds it, or the mmap'd tensor itself
        self._raw: dict[str, safe_open | torch.Tensor] = {}
        self._raw_meta: dict[str, torch.Tensor] = {}
        try:
            self._open()
            self._plan = self._make_plan()
        except BaseException:
            self._stack.close()
            raise

    def _open(self) -> None:
        if self.path.is_dir() or self.path.suffix == ".safetensors":
            for file in safetensors_files(self.path):
                try:
                    handle = self._stack.enter_context(safe_open(str(file), framework="pt"))
                    for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        sl = handle.get_slice(key)
                        dtype = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
                        self._raw[key] = handle
                        self._raw_meta[key] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
                except (SafetensorError, OSError, RuntimeError, ValueError) as e:
                    raise CheckpointError(
                        f"{file}: not a readable safetensors file ({one_line(e)})"
                    ) from None
        else:
            for key, tensor in read_torch_file(self.path).items():  # memory-mapped: nothing is read yet
                self._raw[key] = tensor
                self._raw_meta[key] = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")

    def _make_plan(self) -> dict[str, tuple[tuple[str, ...], bool]]:
        """original key -> (raw keys to concatenate, swap halves)."""
        stripped = strip_prefix({k: k for k in self._raw})  # values: the raw keys
        try:
            layout = detect_layout(stripped)
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        plan: dict[str, tuple[tuple[str, ...], bool]] = {}
        rest = dict(stripped)
        if layout == "diffusers":
            for m in maps_for_keys(stripped.keys(), diffusers=True):
                for suffix in ("weight", "bias"):
                    names = [f"{p}.{suffix}" for p in m.theirs]
                    if all(n in rest for n in names):
                        plan[f"{m.ours}.{suffix}"] = (tuple(rest.pop(n) for n in names), m.swap_halves)
        plan.update({k: ((raw,), False) for k, raw in rest.items()})
        return plan

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def keys(self) -> list[str]:
        return list(self._plan)

    def _raw_tensor(self, key: str) -> torch.Tensor:
        source = self._raw[key]
        if isinstance(source, torch.Tensor):
            return source
        try:
            return source.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{self.path}: cannot read {key} ({one_line(e)})") from None

    def _assemble(self, key: str, read: Callable[[str], torch.Tensor]) -> torch.Tensor:
        raws, swap = self._plan[key]
        parts = [read(r) for r in raws]
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if swap:
            a, b = tensor.chunk(2, dim=0)
            tensor = torch.cat([b, a], dim=0)
        return tensor

    def meta(self, key: str) -> torch.Tensor:
        """A meta tensor with the shape and dtype of `key`: nothing is read."""
        return self._assemble(key, self._raw_meta.__getitem__)

    def meta_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: self.meta(k) for k in self._plan}

    def get(self, key: str) -> torch.Tensor:
        return self._assemble(key, self._raw_tensor)
