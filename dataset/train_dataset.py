"""Serve bucketed batches of cached tensors to the training loop.

Every batch holds items of one dataset and one bucket (same latent shape). The order of an epoch is a pure
function of (seed, epoch), so a run resumed at (epoch, batch index) sees exactly the batches an uninterrupted
run would have seen, and nothing has to be replayed to get there.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .cache_files import LATENT_FORMAT, TEXT_FORMAT, CacheFileError, load_cache, read_metadata
from .cache_names import LATENT_SUFFIX, text_cache_name


@dataclass(frozen=True)
class CachedItem:
    latent_path: Path
    text_path: Path
    bucket: tuple[int, ...]  # latent shape (C, F, H, W)


@dataclass(frozen=True)
class CachedDatasetSpec:
    """What the trainer needs of one [[datasets]] entry."""

    cache_directory: Path
    batch_size: int = 1
    num_repeats: int = 1

    @classmethod
    def of(cls, dataset, repeats: bool = True) -> CachedDatasetSpec:
        """From a parsed [[datasets]] entry; validation sets are read once per evaluation (repeats=False)."""
        return cls(dataset.cache_directory, dataset.batch_size, dataset.num_repeats if repeats else 1)


def discover_cached_items(cache_directory: Path) -> list[CachedItem]:
    """Latent files and their text files in a cache directory; missing or unreadable ones are errors."""
    if not cache_directory.is_dir():
        raise CacheFileError(f"cache directory not found: {cache_directory}; run cache_latents.py first")
    items = []
    for latent in sorted(cache_directory.glob(f"*{LATENT_SUFFIX}")):
        meta = read_metadata(latent)
        if meta is None or meta.get("format_version") != LATENT_FORMAT:
            raise CacheFileError(f"corrupt cache file {latent}; rerun cache_latents.py")
        text = cache_directory / text_cache_name(meta["item_key"])
        if not text.is_file():
            raise CacheFileError(f"no text cache for {latent.name}: run cache_text_encoder_outputs.py")
        shape = tuple(int(x) for x in meta["latent_shape"].split("x"))
        items.append(CachedItem(latent, text, shape))
    if not items:
        raise CacheFileError(f"no cached latents in {cache_directory}: run cache_latents.py first")
    return items


class CachedBatches(Dataset):
    """Index i of epoch e is one whole batch; use with DataLoader(batch_size=None)."""

    def __init__(self, specs: Sequence[CachedDatasetSpec], seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0
        self._groups: list[tuple[list[CachedItem], int]] = []  # (items of one bucket, batch size)
        for spec in specs:
            buckets: dict[tuple[int, ...], list[CachedItem]] = defaultdict(list)
            for item in discover_cached_items(spec.cache_directory):
                buckets[item.bucket].extend([item] * spec.num_repeats)
            self._groups.extend((items, spec.batch_size) for _, items in sorted(buckets.items()))
        self._plan = self._plan_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._plan = self._plan_epoch(epoch)

    def _plan_epoch(self, epoch: int) -> list[list[CachedItem]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        batches = []
        for items, batch_size in self._groups:
            order = list(items)
            rng.shuffle(order)
            batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return len(self._plan)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """Batch `index` of the current epoch, or of any epoch given as (epoch, index): a loader whose sampler
        spans epochs keeps its workers for the whole run (each worker plans the epochs it meets itself)."""
        if isinstance(index, tuple):
            epoch, index = index
            if epoch != self.epoch:
                self.set_epoch(epoch)
        return collate([_load_item(item) for item in self._plan[index]])


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


def _load_item(item: CachedItem) -> dict[str, torch.Tensor]:
    latents = load_cache(item.latent_path, LATENT_FORMAT, ("latents",))
    text = load_cache(item.text_path, TEXT_FORMAT, ("llm", "clip_pooled"))
    return {"latents": latents["latents"], "llm": text["llm"], "clip_pooled": text["clip_pooled"]}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack latents and pooled vectors; pad the LLM states (stored without padding) and build their mask."""
    lengths = [it["llm"].shape[0] for it in items]
    length = max(lengths)
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
