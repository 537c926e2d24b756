"""cache_text_encoder_outputs.py: every caption through the LLM and CLIP-L, one safetensors file per item
(options: caching/options.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from caching.options import TextCacheConfig
from caching.workers import ordered_map
from dataset.cache_files import check_text_file, file_identity, is_current, text_digest, write_text_cache
from dataset.cache_names import TEXT_GLOB
from dataset.cache_stale import remove_stale
from dataset.config import load_dataset_config
from dataset.items import CaptionRecord, list_captions
from hv_common.devices import parse_dtype, pick_device

logger = logging.getLogger(__name__)


def _expected(record: CaptionRecord, encoders_id: str) -> dict[str, str]:
    """Ours: same caption and encoders. musubi-tuner's files (no provenance keys): same caption1, valid."""
    return {
        "item_key": record.item_key,
        "caption": text_digest(record.caption),
        "encoders": encoders_id,
        "caption1": record.caption,
    }


def _remove_stale(blueprint, keep_cache: bool) -> None:
    for dataset in blueprint.all_datasets:
        produced = {record.text_cache_name for record in list_captions(dataset)}
        remove_stale(dataset.cache_directory, TEXT_GLOB, produced, keep_cache)


def _jobs(blueprint, skip_existing: bool, encoders_id: str, workers: int) -> list[tuple[CaptionRecord, Path]]:
    """Each caption to encode and the file it goes to: all of them, or those not current. `workers` threads
    read the captions (a dataset each) and the existing files' headers."""
    datasets = list(blueprint.all_datasets)
    targets = [
        (record, dataset.cache_directory / record.text_cache_name)
        for dataset, records in zip(datasets, ordered_map(list_captions, datasets, workers), strict=True)
        for record in records
    ]
    if not skip_existing:
        return targets

    def stale(job: tuple[CaptionRecord, Path]) -> bool:
        record, path = job
        return not is_current(path, _expected(record, encoders_id), check_text_file)

    return [
        job for job, is_stale in zip(targets, ordered_map(stale, targets, workers), strict=True) if is_stale
    ]


def run(config: TextCacheConfig) -> int:
    options, encoders = config.encoding, config.encoders
    blueprint = load_dataset_config(config.dataset.dataset_config, check_media=True)
    device = pick_device(options.device)
    dtype = parse_dtype(
        options.text_encoder_dtype, default=torch.float16 if device.type == "cuda" else torch.float32
    )
    encoders_id = f"{file_identity(encoders.text_encoder1)}-{file_identity(encoders.text_encoder2)}"
    jobs = _jobs(blueprint, config.dataset.skip_existing, encoders_id, config.run.workers)
    if not jobs:
        logger.info("every text cache file is current")
        _remove_stale(blueprint, config.dataset.keep_cache)
        return 0
    models = encoders.load(dtype, device, fp8_llm=options.fp8_llm)
    with tqdm(total=len(jobs), desc="text encoders", unit="item") as bar:
        for start in range(0, len(jobs), options.batch_size):
            chunk = jobs[start : start + options.batch_size]
            out = models.encode([record.caption for record, _ in chunk])
            for i, (record, path) in enumerate(chunk):
                # musubi-tuner's layout: all 256 LLM states and the mask (its loader stacks them unpadded)
                meta = {**_expected(record, encoders_id), "source_path": str(record.source_path)}
                del meta["caption1"]  # written by write_text_cache
                write_text_cache(path, out.llm[i], out.llm_mask[i], out.clip_pooled[i], record.caption, meta)
            bar.update(len(chunk))
    _remove_stale(blueprint, config.dataset.keep_cache)
    logger.info("wrote %d text cache files", len(jobs))
    return 0
