"""Serve bucketed batches of cached tensors to the training loop.

Every batch holds items of one dataset and one bucket (same latent shape). The order of an epoch is a pure
function of (seed, epoch), so a run resumed at (epoch, batch index) sees exactly the batches an uninterrupted
run would have seen, and nothing has to be replayed to get there.

Data parallel: a dataset's batch_size is per process (as in musubi-tuner). The plan is made of global batches
of num_processes x batch_size items of one bucket, the same on every process; process r trains on its slice.
A bucket's last global batch may be short: it is padded to an equal share per process with copies of its own
items whose loss weight is 0, so every process runs the same shapes and the update equals one process
training the whole global batch. Each item carries a noise seed derived from (seed, epoch, index, position in
the global batch): its noise and t do not depend on which process trains it, nor on the draw order.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .cache_files import load_latents, load_text, text_length
from .cache_index import CachedItem, index_cache

__all__ = [
    "CachedBatches",
    "CachedDatasetSpec",
    "CachedItem",
    "EpochSpanningSampler",
    "collate",
    "discover_cached_items",
    "sample_seed",
]


@dataclass(frozen=True)
class CachedDatasetSpec:
    """What the trainer needs of one [[datasets]] entry."""

    cache_directory: Path
    batch_size: int = 1
    num_repeats: int = 1
    dataset: object = None  # the parsed [[datasets]] entry: its items are the ones trained (None: every file)

    @classmethod
    def of(cls, dataset, repeats: bool = True) -> CachedDatasetSpec:
        """From a parsed [[datasets]] entry; validation sets are read once per evaluation (repeats=False)."""
        return cls(
            dataset.cache_directory, dataset.batch_size, dataset.num_repeats if repeats else 1, dataset
        )


def discover_cached_items(cache_directory: Path, dataset=None) -> list[CachedItem]:
    """The items of a cache folder, every file header-checked (dataset/cache_index.py)."""
    return index_cache(cache_directory, dataset)


class CachedBatches(Dataset):
    """Index i of epoch e is one whole (per-process) batch; use with DataLoader(batch_size=None)."""

    def __init__(
        self,
        specs: Sequence[CachedDatasetSpec],
        seed: int = 0,
        num_processes: int = 1,
        process_index: int = 0,
    ) -> None:
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} outside 0..{num_processes - 1}")
        self.seed = seed
        self.num_processes, self.process_index = num_processes, process_index
        self.epoch = 0
        self._groups: list[tuple[list[CachedItem], int]] = []  # (items of one bucket, global batch size)
        for spec in specs:
            buckets: dict[tuple[int, ...], list[CachedItem]] = defaultdict(list)
            for item in discover_cached_items(spec.cache_directory, spec.dataset):
                buckets[item.bucket].extend([item] * spec.num_repeats)
            self._groups.extend(
                (items, spec.batch_size * num_processes) for _, items in sorted(buckets.items())
            )
        self._text_lengths: dict[Path, int] = {}
        self._checked: set[Path] = set()  # files whose values were checked finite (in this process)
        self._plan = self._plan_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._plan = self._plan_epoch(epoch)

    def _plan_epoch(self, epoch: int) -> list[list[CachedItem]]:
        """The global batches of an epoch: the same on every process, whatever its index."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        batches: list[list[CachedItem]] = []
        for items, batch_size in self._groups:
            order = list(items)
            rng.shuffle(order)
            batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return len(self._plan)

    def share(self, index: int) -> tuple[list[CachedItem], list[int], int]:
        """This process's items of global batch `index`, their positions in it, and the global batch's real
        item count; a position past that count is a pad, a copy of item (position mod count)."""
        items = self._plan[index]
        per_process = math.ceil(len(items) / self.num_processes)
        start = self.process_index * per_process
        positions = list(range(start, start + per_process))
        return [items[p % len(items)] for p in positions], positions, len(items)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """Batch `index` of the current epoch, or of any epoch given as (epoch, index): a loader whose sampler
        spans epochs keeps its workers for the whole run (each worker plans the epochs it meets itself)."""
        if isinstance(index, tuple):
            epoch, index = index
            if epoch != self.epoch:
                self.set_epoch(epoch)
        items, positions, real = self.share(index)
        # LLM states are padded to the longest of the global batch: every process runs the same shapes (and so
        # draws the same dropout masks), and the numbers match one process training the whole global batch.
        length = max(self._text_length(item) for item in self._plan[index])
        batch: dict[str, Any] = collate([self._load_item(item) for item in items], length)  # + a list of str
        # the files behind the batch, so a non-finite loss can name them (training/nonfinite.py)
        batch["cache_paths"] = [
            str(p) for item in dict.fromkeys(items) for p in (item.latent_path, item.text_path)
        ]
        # Each process's loss is scaled so that the average over processes (DDP) is the global batch's mean.
        batch["loss_scale"] = torch.tensor(
            [self.num_processes / real if p < real else 0.0 for p in positions], dtype=torch.float32
        )
        batch["noise_seed"] = torch.tensor(
            [sample_seed(self.seed, self.epoch, index, p) for p in positions], dtype=torch.int64
        )
        return batch

    def _load_item(self, item: CachedItem) -> dict[str, torch.Tensor]:
        """The item's tensors; a file's values are checked finite the first time this process reads it (a check
        on every read would cost more than the read itself)."""
        checked = self._checked
        out = {
            "latents": load_latents(item.latent_path, check=item.latent_path not in checked),
            **load_text(item.text_path, check=item.text_path not in checked),
        }
        checked.update((item.latent_path, item.text_path))
        return out

    def _text_length(self, item: CachedItem) -> int:
        """The LLM state count of an item, from its file header (the tensors of other processes' items are
        not read)."""
        if item.text_path not in self._text_lengths:
            self._text_lengths[item.text_path] = text_length(item.text_path)
        return self._text_lengths[item.text_path]


def sample_seed(seed: int, epoch: int, index: int, position: int) -> int:
    """The noise/t seed of one item of global batch `index` of `epoch`: independent of the process count."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative int64


class EpochSpanningSampler:
    """(epoch, index) keys from a position onwards, epoch after epoch, without end: the loop decides when to stop."""

    def __init__(self, batches_per_epoch: int, epoch: int = 0, index: int = 0) -> None:
        self.batches_per_epoch, self.epoch, self.index = batches_per_epoch, epoch, index

    def __iter__(self):
        epoch, index = self.epoch, self.index
        while True:
            for i in range(index, self.batches_per_epoch):
                yield (epoch, i)
            epoch, index = epoch + 1, 0


def collate(items: list[dict[str, torch.Tensor]], length: int | None = None) -> dict[str, torch.Tensor]:
    """Stack latents and pooled vectors; pad the LLM states (stored without padding) to `length` (default: the
    longest) and build their mask."""
    lengths = [it["llm"].shape[0] for it in items]
    length = max(lengths) if length is None else length
    if min(lengths) == length:  # nothing to pad (always so at batch size 1)
        llm = torch.stack([it["llm"] for it in items])
        mask = torch.ones(len(items), length, dtype=torch.bool)
    else:
        llm = items[0]["llm"].new_zeros(len(items), length, items[0]["llm"].shape[1])
        mask = torch.zeros(len(items), length, dtype=torch.bool)
        for i, (it, n) in enumerate(zip(items, lengths, strict=True)):
            llm[i, :n] = it["llm"]
            mask[i, :n] = True
    return {
        "latents": torch.stack([it["latents"] for it in items]),
        "llm": llm,
        "llm_mask": mask,
        "clip_pooled": torch.stack([it["clip_pooled"] for it in items]),
    }
