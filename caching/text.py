"""cache_text_encoder_outputs.py: every caption through the LLM and CLIP-L, one safetensors file per item."""

from __future__ import annotations

import argparse
import logging

import torch
from tqdm import tqdm

from dataset.cache_files import check_text_file, file_identity, is_current, text_digest, write_text_cache
from dataset.cache_names import TEXT_GLOB
from dataset.cache_stale import remove_stale
from dataset.config import load_dataset_config
from dataset.items import CaptionRecord, list_captions
from hunyuan_model.encoder_options import add_text_encoder_args
from hv_common.cli import OneLineArgumentParser
from hv_common.devices import parse_dtype, pick_device

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="cache_text_encoder_outputs.py", description=__doc__)
    p.add_argument("--dataset_config", required=True, help="dataset TOML")
    add_text_encoder_args(p)
    p.add_argument(
        "--text_encoder_dtype", default=None, help="float32 | float16 | bfloat16 (default: float16 on GPU)"
    )
    p.add_argument("--fp8_llm", action="store_true", help="(GPU issue) fp8 LLM weights; not implemented yet")
    p.add_argument("--batch_size", type=int, default=16, help="captions per encoder call")
    p.add_argument("--skip_existing", action="store_true", help="keep valid, current cache files")
    p.add_argument("--keep_cache", action="store_true",
                   help="keep cache files no item of the dataset produces any more (default: delete them)")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    return p


def _expected(record: CaptionRecord, encoders_id: str) -> dict[str, str]:
    """Ours: same caption and encoders. musubi-tuner's files (no provenance keys): same caption1, valid."""
    return {"item_key": record.item_key, "caption": text_digest(record.caption), "encoders": encoders_id,
            "caption1": record.caption}  # fmt: skip


def _remove_stale(blueprint, keep_cache: bool) -> None:
    for dataset in blueprint.all_datasets:
        produced = {record.text_cache_name for record in list_captions(dataset)}
        remove_stale(dataset.cache_directory, TEXT_GLOB, produced, keep_cache)


def run(args: argparse.Namespace) -> int:
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    blueprint = load_dataset_config(args.dataset_config, check_media=True)
    if args.fp8_llm:
        logger.warning("--fp8_llm is not implemented yet: the LLM runs in --text_encoder_dtype")
    device = pick_device(args.device)
    dtype = parse_dtype(
        args.text_encoder_dtype, default=torch.float16 if device.type == "cuda" else torch.float32
    )
    encoders_id = f"{file_identity(args.text_encoder1)}-{file_identity(args.text_encoder2)}"
    jobs = []
    for dataset in blueprint.all_datasets:
        for record in list_captions(dataset):
            path = dataset.cache_directory / record.text_cache_name
            if not (args.skip_existing and is_current(path, _expected(record, encoders_id), check_text_file)):
                jobs.append((record, path))
    if not jobs:
        logger.info("every text cache file is current")
        _remove_stale(blueprint, args.keep_cache)
        return 0
    encoders = HunyuanTextEncoders(args.text_encoder1, args.text_encoder2, dtype=dtype, device=device,
                                   llm_tokenizer=args.tokenizer1, clip_tokenizer=args.tokenizer2)  # fmt: skip
    with tqdm(total=len(jobs), desc="text encoders", unit="item") as bar:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            out = encoders.encode([record.caption for record, _ in chunk])
            for i, (record, path) in enumerate(chunk):
                # musubi-tuner's layout: all 256 LLM states and the mask (its loader stacks them unpadded)
                meta = {**_expected(record, encoders_id), "source_path": str(record.source_path)}
                del meta["caption1"]  # written by write_text_cache
                write_text_cache(path, out.llm[i], out.llm_mask[i], out.clip_pooled[i], record.caption, meta)
            bar.update(len(chunk))
    _remove_stale(blueprint, args.keep_cache)
    logger.info("wrote %d text cache files", len(jobs))
    return 0
