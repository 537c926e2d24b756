"""cache_text_encoder_outputs.py: every caption through the LLM and CLIP-L, one safetensors file per item."""

from __future__ import annotations

import argparse
import logging

import torch
from tqdm import tqdm

from dataset.cache_files import TEXT_FORMAT, file_identity, is_current, text_digest, write_cache
from dataset.config import load_dataset_config
from dataset.items import CaptionRecord, list_captions

from .cli import OneLineArgumentParser
from .devices import parse_dtype, pick_device
from .encoder_args import add_text_encoder_args

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
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    return p


def _expected(record: CaptionRecord, encoders_id: str) -> dict[str, str]:
    return {"format_version": TEXT_FORMAT, "item_key": record.item_key, "caption": text_digest(record.caption),
            "encoders": encoders_id}  # fmt: skip


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
            if not (args.skip_existing and is_current(path, _expected(record, encoders_id))):
                jobs.append((record, path))
    if not jobs:
        logger.info("every text cache file is current")
        return 0
    encoders = HunyuanTextEncoders(args.text_encoder1, args.text_encoder2, dtype=dtype, device=device,
                                   llm_tokenizer=args.tokenizer1, clip_tokenizer=args.tokenizer2)  # fmt: skip
    with tqdm(total=len(jobs), desc="text encoders", unit="item") as bar:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start : start + args.batch_size]
            out = encoders.encode([record.caption for record, _ in chunk])
            for i, (record, path) in enumerate(chunk):
                valid = int(out.llm_mask[i].sum())  # stored without padding; the loader pads per batch
                tensors = {"llm": out.llm[i, :valid], "clip_pooled": out.clip_pooled[i]}
                write_cache(
                    path, tensors, {**_expected(record, encoders_id), "source_path": str(record.source_path)}
                )
            bar.update(len(chunk))
    logger.info("wrote %d text cache files", len(jobs))
    return 0
