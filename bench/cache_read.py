"""Serving cached batches, and what musubi-tuner's shared text-cache layout costs against our old one.

Eight cached items in the shared format (musubi-tuner's): latents 16x2x32x32 (a 256x256, 5-frame window),
LLM states padded to 256 tokens of --llm_width (4096 for HunyuanVideo's LLM) with --tokens valid, CLIP pooled
768, all --dtype. Two comparisons, the variants interleaved, minimum of the rounds:
  ours_vs_plain:   our CachedBatches (read, check finite, drop the padding, pad per batch) / plain
                   safetensors.torch.load_file of the same two files per item (1.0 = no overhead beyond reading)
  padded_vs_trimmed: reading a whole shared text file (256 states) / reading a whole file of the valid states
                   only (our former hv_text_v1 layout and reader); text_bytes_* are the two files' sizes
  ours_text_vs_trimmed: our reader of the shared file (load_text: the prompt's rows only) / the former one
Prints one JSON line. Run it single-threaded, as a DataLoader worker runs (on a busy machine torch's
multi-threaded copies dominate and the ratios say nothing about reading):

OMP_NUM_THREADS=1 python bench/cache_read.py [--rounds 5] [--batches 1000] [--tokens 40] [--llm_width 4096] [--dtype float16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.cache_files import load_text, write_latent_cache, write_text_cache  # noqa: E402
from dataset.cache_format import FLOAT_NAMES  # noqa: E402
from dataset.cache_names import latent_cache_name, text_cache_name  # noqa: E402
from dataset.train_dataset import CachedBatches, CachedDatasetSpec  # noqa: E402


def make_cache(folder: Path, args, items: int = 8) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The shared-format files, and for each text file its trimmed twin (valid states only) in folder/trimmed."""
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    (folder / "trimmed").mkdir()
    pairs, trimmed = [], []
    for i in range(items):
        key = f"clip{i}"
        lat = folder / latent_cache_name(key, 256, 256, start_frame=0, frame_count=5)
        write_latent_cache(lat, torch.randn(16, 2, 32, 32, generator=g).to(dtype), (256, 256), 5, {})
        llm = torch.randn(256, args.llm_width, generator=g).to(dtype)
        mask = torch.arange(256) < args.tokens
        pooled = torch.randn(768, generator=g).to(dtype)
        txt = folder / text_cache_name(key)
        write_text_cache(txt, llm, mask, pooled, f"caption {i}", {})
        twin = folder / "trimmed" / txt.name
        save_file({"llm": llm[: args.tokens].contiguous(), "clip_pooled": pooled}, str(twin))
        pairs.append((lat, txt))
        trimmed.append(twin)
    return pairs, trimmed


def time_ours(dataset: CachedBatches, batches: int) -> float:
    start = time.perf_counter()
    for n in range(batches):
        dataset[n % len(dataset)]
    return time.perf_counter() - start


def time_plain(pairs: list[tuple[Path, Path]], batches: int) -> float:
    start = time.perf_counter()
    for n in range(batches):
        lat, txt = pairs[n % len(pairs)]
        load_file(str(lat))
        load_file(str(txt))
    return time.perf_counter() - start


def time_ours_text(files: list[Path], batches: int) -> float:
    start = time.perf_counter()
    for n in range(batches):
        load_text(files[n % len(files)], check=False)
    return time.perf_counter() - start


def time_reads(files: list[Path], batches: int) -> float:
    start = time.perf_counter()
    for n in range(batches):
        load(files[n % len(files)].read_bytes())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=40, help="valid LLM tokens of a caption")
    parser.add_argument("--llm_width", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=FLOAT_NAMES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pairs, trimmed = make_cache(Path(tmp), args)
        dataset = CachedBatches([CachedDatasetSpec(Path(tmp), batch_size=1)], seed=0)
        ours, plain, padded, short, sliced = [], [], [], [], []
        for _ in range(args.rounds):
            ours.append(time_ours(dataset, args.batches))
            plain.append(time_plain(pairs, args.batches))
            padded.append(time_reads([t for _, t in pairs], args.batches))
            short.append(time_reads(trimmed, args.batches))
            sliced.append(time_ours_text([t for _, t in pairs], args.batches))
        sizes = pairs[0][1].stat().st_size, trimmed[0].stat().st_size
    result = {
        "batches": args.batches,
        "ours_s": round(min(ours), 4),
        "plain_s": round(min(plain), 4),
        "ours_vs_plain": round(min(ours) / min(plain), 3),
        "text_bytes_shared": sizes[0],
        "text_bytes_trimmed": sizes[1],
        "padded_vs_trimmed": round(min(padded) / min(short), 3),
        "ours_text_vs_trimmed": round(min(sliced) / min(short), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
