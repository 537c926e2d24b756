"""cache_latents.py: every item of the dataset TOML through the VAE, one safetensors file per item and window
(options: caching/options.py)."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator

import torch
from tqdm import tqdm

from caching.options import LatentCacheConfig, LatentEncodeOptions
from caching.workers import ordered_map
from dataset.cache_files import check_latent_file, file_identity, is_current, write_latent_cache
from dataset.cache_names import LATENT_GLOB, name_size, parse_latent_cache_name
from dataset.cache_stale import remove_stale
from dataset.config import DatasetConfig, load_dataset_config
from dataset.items import ItemPlan, ItemRecord, load_item, plan_items
from hv_common.devices import parse_dtype, pick_device

logger = logging.getLogger(__name__)


def _item_seed(seed: int, record: ItemRecord) -> int:
    return zlib.crc32(f"{seed}:{record.item_key}:{record.start_frame}:{record.bucket}".encode())


def _expected_metadata(plan: ItemPlan, vae_id: str, seed: int) -> dict[str, str]:
    return {
        "item_key": plan.item_key,
        "source": file_identity(plan.source_path),
        "vae": vae_id,
        "seed": str(seed),
    }


def _is_current(dataset: DatasetConfig, plan: ItemPlan, window, expected: dict[str, str]) -> bool:
    """Ours: made from the same source, VAE, seed and bucket. musubi-tuner's: a valid file of this bucket."""
    name = plan.latent_cache_name(window)
    bucket = (*plan.bucket_size, window.count)
    meta = {**expected, "bucket": "x".join(map(str, bucket))}
    parsed = parse_latent_cache_name(name, is_video=plan.is_video)
    return is_current(dataset.cache_directory / name, meta, lambda p: check_latent_file(p, parsed, bucket))


def _pending(
    dataset: DatasetConfig, plans: list[ItemPlan], vae_id: str, seed: int, skip_existing: bool, workers: int
) -> Iterator[ItemRecord]:
    """The records to encode, in plan order; `workers` threads decode the media ahead of the VAE."""

    def records(plan: ItemPlan) -> list[ItemRecord]:
        if not skip_existing:
            return list(load_item(dataset, plan))
        expected = _expected_metadata(plan, vae_id, seed)
        current = {plan.latent_cache_name(w) for w in plan.windows if _is_current(dataset, plan, w, expected)}
        if len(current) == len(plan.latent_cache_names):
            return []
        # decode the clip once; encode only the stale windows
        return [r for r in load_item(dataset, plan) if r.latent_cache_name not in current]

    for batch in ordered_map(records, plans, workers):
        yield from batch


def _batches(records: Iterator[ItemRecord], batch_size: int) -> Iterator[list[ItemRecord]]:
    """Consecutive records of one bucket, up to batch_size at a time."""
    batch: list[ItemRecord] = []
    for record in records:
        if batch and (len(batch) == batch_size or batch[0].bucket != record.bucket):
            yield batch
            batch = []
        batch.append(record)
    if batch:
        yield batch


def _encode_and_write(
    vae, dataset: DatasetConfig, batch: list[ItemRecord], plans: dict, vae_id: str, seed: int
) -> None:
    from hunyuan_model.vae import encode_frames

    frames = torch.stack([torch.tensor(r.frames) for r in batch])  # copies: decoded frames are read-only
    generators = [torch.Generator().manual_seed(_item_seed(seed, r)) for r in batch]
    latents = encode_frames(vae, frames, generators).cpu()
    for record, latent in zip(batch, latents, strict=True):
        w, h, f = record.bucket
        meta = _expected_metadata(plans[record.item_key], vae_id, seed)
        meta.update(
            bucket=f"{w}x{h}x{f}", start_frame=str(record.start_frame), source_path=str(record.source_path)
        )
        write_latent_cache(
            dataset.cache_directory / record.latent_cache_name,
            latent,
            name_size(record.is_video, record.original_size, record.bucket[:2]),
            f if record.is_video else None,
            meta,
            what=f"{record.source_path} (frames from {record.start_frame})",
        )


def _load_vae(options: LatentEncodeOptions):
    from hunyuan_model.vae import enable_vae_tiling, load_vae, set_vae_chunk_size

    assert options.vae is not None  # LatentCacheConfig requires it unless --debug_mode
    device = pick_device(options.device)
    dtype = parse_dtype(options.vae_dtype, default=torch.float16 if device.type == "cuda" else torch.float32)
    vae = load_vae(options.vae, dtype=dtype, device=device)
    if options.vae_chunk_size:
        set_vae_chunk_size(vae, options.vae_chunk_size)
        logger.info("VAE: CausalConv3d computed in chunks of %d", options.vae_chunk_size)
    enable_vae_tiling(vae, options.tile_size)
    return vae


def _show(blueprint, config: LatentCacheConfig) -> int:
    """--debug_mode: the items shown (or saved) instead of cached; no VAE is loaded."""
    from caching.debug import show_datasets

    def records_of(dataset: DatasetConfig) -> Iterator[ItemRecord]:
        for batch in ordered_map(lambda plan: list(load_item(dataset, plan)), plan_items(dataset), workers):
            yield from batch

    workers = config.run.workers
    if config.vae.vae is not None:
        logger.info(
            "--debug_mode %s: the items are shown, not encoded; the VAE is not loaded",
            config.debug.debug_mode,
        )
    show_datasets(list(blueprint.all_datasets), records_of, config.debug)
    return 0


def run(config: LatentCacheConfig) -> int:
    options = config.vae
    blueprint = load_dataset_config(config.dataset.dataset_config)
    if options.disable_cudnn_backend:
        torch.backends.cudnn.enabled = False
        logger.info("cuDNN disabled (--disable_cudnn_backend)")
    if config.debug.debug_mode is not None:
        return _show(blueprint, config)
    vae = _load_vae(options)
    assert options.vae is not None
    vae_id = file_identity(options.vae)
    written = 0
    for dataset in blueprint.all_datasets:
        plans = list(plan_items(dataset))
        by_key = {p.item_key: p for p in plans}
        total = sum(len(p.windows) for p in plans)
        produced = {name for p in plans for name in p.latent_cache_names}
        pending = _pending(
            dataset, plans, vae_id, options.seed, config.dataset.skip_existing, config.run.workers
        )
        with tqdm(total=total, desc=f"latents {dataset.cache_directory.name}", unit="item") as bar:
            done = 0
            for batch in _batches(pending, options.batch_size):
                _encode_and_write(vae, dataset, batch, by_key, vae_id, options.seed)
                produced.update(r.latent_cache_name for r in batch)  # re-planned windows too
                done += len(batch)
                bar.update(len(batch))
            written += done
            bar.update(max(0, total - done))  # skipped as current
        remove_stale(dataset.cache_directory, LATENT_GLOB, produced, config.dataset.keep_cache)
    logger.info("wrote %d latent cache files", written)
    return 0
