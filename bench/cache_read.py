"""Serving cached batches: our CachedBatches vs. plain safetensors.torch.load_file of the same files.

Eight cached items shaped like the tiny training job (256x256, 5 frames -> latents 16x2x32x32; LLM states 32 x 64;
CLIP pooled 32), 1,000 batches of 1 per round, the two variants interleaved, minimum of the rounds.
Prints one JSON line: ours_s, plain_s, ours_vs_plain (ours / plain; 1.0 = no overhead beyond reading).

python bench/cache_read.py [--rounds 5] [--batches 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.cache_files import LATENT_FORMAT, TEXT_FORMAT, write_cache  # noqa: E402
from dataset.cache_names import latent_cache_name, text_cache_name  # noqa: E402
from dataset.train_dataset import CachedBatches, CachedDatasetSpec  # noqa: E402


def make_cache(folder: Path, items: int = 8) -> list[tuple[Path, Path]]:
    g = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(items):
        key = f"clip{i}"
        latents = torch.randn(16, 2, 32, 32, generator=g)
        lat = folder / latent_cache_name(key, 256, 256, start_frame=0, frame_count=5)
        write_cache(lat, {"latents": latents}, {"format_version": LATENT_FORMAT, "item_key": key,
                                                 "latent_shape": "16x2x32x32"})  # fmt: skip
        txt = folder / text_cache_name(key)
        write_cache(txt, {"llm": torch.randn(32, 64, generator=g), "clip_pooled": torch.randn(32, generator=g)},
                    {"format_version": TEXT_FORMAT, "item_key": key})  # fmt: skip
        pairs.append((lat, txt))
    return pairs


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_cache(Path(tmp))
        dataset = CachedBatches([CachedDatasetSpec(Path(tmp), batch_size=1)], seed=0)
        ours, plain = [], []
        for _ in range(args.rounds):
            ours.append(time_ours(dataset, args.batches))
            plain.append(time_plain(pairs, args.batches))
    result = {"batches": args.batches, "ours_s": round(min(ours), 4), "plain_s": round(min(plain), 4),
              "ours_vs_plain": round(min(ours) / min(plain), 3)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
