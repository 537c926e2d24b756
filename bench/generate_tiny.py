"""What a LoRA costs at generation time: seconds per denoising step of the tiny DiT, LoRA on the fly vs merged.

    python bench/generate_tiny.py [--rounds 7] [--steps 4] [--threads N] [--video_size 256 256] [--video_length 17]

The sampler is hv_generate_video.py's (`sample_latents`, fp32, CPU), on random text embeddings (no encoders).
Three copies of the same tiny DiT: without LoRA (the baseline), with a rank-32 LoRA on every default target
applied on the fly (`apply_on_the_fly`, what `--lora_weight` does), and with the same LoRA merged
(`--lora_merge`). Rounds are interleaved and each figure is the minimum over rounds.
Figures: base_s, on_the_fly_s, merged_s (seconds per step); on_the_fly_vs_merged, merged_vs_base (ratios).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hunyuan_model.config import get_preset  # noqa: E402
from hunyuan_model.model import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, build_dit  # noqa: E402
from hunyuan_model.sampler import sample_latents  # noqa: E402
from hunyuan_model.text_encoders import TextEmbeddings  # noqa: E402
from hunyuan_model.tiny import tiny_dit_state_dict  # noqa: E402
from lora_files.apply import apply_on_the_fly, merge_into  # noqa: E402
from lora_files.io import LoadedLoRA  # noqa: E402
from lora_files.layouts import Factors  # noqa: E402
from networks.lora import create_network  # noqa: E402

RANK = 32


def tiny_dit() -> torch.nn.Module:
    model = build_dit(get_preset("tiny"), device="meta")
    model.load_state_dict(tiny_dit_state_dict(), assign=True)
    return model.eval().requires_grad_(False)


def trained_lora() -> LoadedLoRA:
    """Every default target at rank 32, with non-zero up weights (a trained-looking LoRA)."""
    network = create_network(
        1.0,
        RANK,
        float(RANK),
        tiny_dit(),
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
    )
    g = torch.Generator().manual_seed(0)
    weights = {
        name: Factors(
            m.lora_down.weight.detach(), torch.randn(m.lora_up.weight.shape, generator=g) * 0.05, RANK
        )
        for name, m in zip(network.module_names, network.loras, strict=True)
    }
    return LoadedLoRA("bench", weights, "default", {})


def embeddings() -> TextEmbeddings:
    cfg = get_preset("tiny")
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[:, :24] = True  # a 24-token prompt in the 256-token window the encoder pads to
    return TextEmbeddings(
        llm=torch.randn(1, 256, cfg.text_states_dim, generator=g),
        llm_mask=mask,
        clip_pooled=torch.randn(1, cfg.text_states_dim_2, generator=g),
    )


def step_seconds(model: torch.nn.Module, emb: TextEmbeddings, args: argparse.Namespace) -> float:
    height, width = args.video_size
    start = time.perf_counter()
    sample_latents(
        model,
        emb,
        height=height,
        width=width,
        frames=args.video_length,
        steps=args.steps,
        embedded_guidance_scale=6.0,
        flow_shift=7.0,
        seed=0,
        device="cpu",
        dtype=torch.float32,
        progress=False,
    )
    return (time.perf_counter() - start) / args.steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=4, help="denoising steps per timed run")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--video_size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    p.add_argument("--video_length", type=int, default=17)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lora = trained_lora()
    on_the_fly, merged = tiny_dit(), tiny_dit()
    apply_on_the_fly(on_the_fly, [(lora, 1.0)])
    merge_into(merged, [(lora, 1.0)])
    variants = {"base": tiny_dit(), "on_the_fly": on_the_fly, "merged": merged}
    emb = embeddings()
    best = {name: float("inf") for name in variants}
    for model in variants.values():  # warm-up: first-call allocations are not the steady state
        step_seconds(model, emb, argparse.Namespace(**{**vars(args), "steps": 1}))
    for r in range(args.rounds):
        for name, model in variants.items():
            best[name] = min(best[name], step_seconds(model, emb, args))
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in best.items()),
            file=sys.stderr,
        )
    height, width = args.video_size
    result = {
        "video": f"{height}x{width}x{args.video_length}",
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "lora_modules": len(lora.weights),
        "rank": RANK,
        "base_s": round(best["base"], 6),
        "on_the_fly_s": round(best["on_the_fly"], 6),
        "merged_s": round(best["merged"], 6),
        "on_the_fly_vs_merged": round(best["on_the_fly"] / best["merged"], 3),
        "merged_vs_base": round(best["merged"] / best["base"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
