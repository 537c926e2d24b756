"""What a LoRA costs: one real-width double block, forward + backward, with and without LoRA; network creation.

    python bench/lora_layer.py [--rounds 7] [--skip-peft] [--threads N]

Figures (ratios of minimums over interleaved rounds, all in this process, fp32, CPU):
  ours_vs_base     our LoRA on the block's 8 target Linears (rank 32) / the block without LoRA
  peft_vs_base     PEFT's LoRA on the same Linears / the same base (PEFT is a bench-only dependency)
  musubi_style_vs_base  a reference layer as musubi-tuner writes it (org + lx * multiplier * scale)
  create_full_s    building our network (CPU weights, as for training) on the full 720p meta model
  create_nn_linear_s    the same LoRA weights built from plain nn.Linear + zero init (the usual way), same run
  create_floor_s   the same tensors alone (uniform + zeros, no modules): what allocation and init cost here
The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hunyuan_model.config import get_preset  # noqa: E402
from hunyuan_model.model import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, MMDoubleStreamBlock, build_dit  # noqa: E402
from hunyuan_model.rope import rope_freqs  # noqa: E402
from networks.lora import create_network  # noqa: E402

HIDDEN, HEADS, RANK, IMG_TOKENS, TXT_TOKENS = 3072, 24, 32, 256, 64
TARGETS = r"(img|txt)_(attn_qkv|attn_proj|mlp\.fc1|mlp\.fc2)"
NET_KW = dict(target_block_classes=TARGET_BLOCK_CLASSES, default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS)


def make_block(weights: dict[str, torch.Tensor] | None = None) -> MMDoubleStreamBlock:
    """A frozen fp32 block; with `weights`, sharing those tensors (same memory, same numbers)."""
    with torch.device("meta"):
        block = MMDoubleStreamBlock(HIDDEN, HEADS, 4.0)
    if weights is None:
        block.to_empty(device="cpu")
        for p in block.parameters():
            nn.init.uniform_(p, -0.02, 0.02)
    else:
        block.load_state_dict(weights, assign=True)
    return block.requires_grad_(False)


class MusubiStyleLoRA(nn.Module):
    """Reference only: the forward most LoRA trainers use (several full-size temporaries per call)."""

    def __init__(self, org: nn.Linear, rank: int) -> None:
        super().__init__()
        self.lora_down = nn.Linear(org.in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, org.out_features, bias=False)
        nn.init.uniform_(self.lora_up.weight, -0.01, 0.01)
        self.multiplier, self.scale, self.org_forward = 1.0, 1.0, org.forward
        org.forward = self.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.org_forward(x) + self.lora_up(self.lora_down(x)) * self.multiplier * self.scale


def inputs():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, IMG_TOKENS, HIDDEN, generator=g).requires_grad_(True)
    txt = torch.randn(1, TXT_TOKENS, HIDDEN, generator=g).requires_grad_(True)
    vec = torch.randn(1, HIDDEN, generator=g)
    rope = rope_freqs(
        (1, 16, 16), get_preset("hunyuan-video-t2v-720p").rope_dim_list, 256.0, torch.device("cpu")
    )
    grads = (torch.randn(1, IMG_TOKENS, HIDDEN, generator=g), torch.randn(1, TXT_TOKENS, HIDDEN, generator=g))
    return (img, txt, vec, None, rope), grads


def step_time(block: nn.Module, args, grads) -> float:
    start = time.perf_counter()
    outs = block(*args)
    torch.autograd.backward(outs, grads)
    elapsed = time.perf_counter() - start
    for t in args[:2]:
        t.grad = None
    for p in block.parameters():
        p.grad = None
    return elapsed


def ours(block: nn.Module) -> nn.Module:
    network = create_network(1.0, RANK, float(RANK), block, **NET_KW)
    assert len(network.loras) == 8, network.module_names  # qkv, proj, fc1, fc2 of both streams
    for lora in network.loras:
        nn.init.uniform_(lora.lora_up.weight, -0.01, 0.01)  # trained-looking, not zero
    network.apply_to(block)
    block._network = [network]  # keep it alive with the block
    return block


def peft(block: nn.Module) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS, lora_dropout=0.0)
    block = inject_adapter_in_model(config, block)
    assert sum(name.endswith("lora_A") for name, _ in block.named_modules()) == 8
    for name, p in block.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:
            nn.init.uniform_(p, -0.01, 0.01)
    return block


def musubi_style(block: nn.Module) -> nn.Module:
    block._loras = nn.ModuleList(
        MusubiStyleLoRA(m, RANK)
        for name, m in block.named_modules()
        if isinstance(m, nn.Linear) and "mod" not in name
    )
    return block


def bench_block(rounds: int, with_peft: bool) -> dict[str, float]:
    base = make_block()
    weights = base.state_dict()
    variants = {
        "base": base,
        "ours": ours(make_block(weights)),
        "musubi_style": musubi_style(make_block(weights)),
    }
    if with_peft:
        variants["peft"] = peft(make_block(weights))
    args, grads = inputs()
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds + 1):  # round 0 warms up and is dropped
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: no variant always first
            t = step_time(variants[name], args, grads)
            if r:
                times[name].append(t)
    best = {k: min(v) for k, v in times.items()}
    figures = {f"{k}_vs_base": best[k] / best["base"] for k in names if k != "base"}
    figures["base_step_s"] = best["base"]
    return figures


def target_shapes(model: nn.Module) -> list[tuple[int, int]]:
    network = create_network(1.0, RANK, float(RANK), model, device="meta", **NET_KW)
    return [(lora.in_features, lora.out_features) for lora in network.loras]


def nn_linear_weights(shapes: list[tuple[int, int]]) -> list[nn.Module]:
    out = []
    for fan_in, fan_out in shapes:
        down, up = nn.Linear(fan_in, RANK, bias=False), nn.Linear(RANK, fan_out, bias=False)
        nn.init.zeros_(up.weight)
        out += [down, up]
    return out


def raw_tensors(shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The floor: the same tensors, random and zero, with no module around them."""
    out = []
    for fan_in, fan_out in shapes:
        out += [torch.empty(RANK, fan_in).uniform_(-0.01, 0.01), torch.zeros(fan_out, RANK)]
    return out


def bench_create(rounds: int) -> dict[str, float]:
    model = build_dit(get_preset("hunyuan-video-t2v-720p"), device="meta")
    shapes = target_shapes(model)
    jobs = {
        "create_full_s": lambda: create_network(1.0, RANK, float(RANK), model, **NET_KW),
        "create_nn_linear_s": lambda: nn_linear_weights(shapes),
        "create_floor_s": lambda: raw_tensors(shapes),
    }
    best = dict.fromkeys(jobs, math.inf)
    names = list(jobs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            made = jobs[name]()
            best[name] = min(best[name], time.perf_counter() - start)
            del made
    best["modules"] = len(shapes)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=7, help="timed rounds per variant (minimum is reported)"
    )
    parser.add_argument("--skip-peft", action="store_true", help="leave PEFT out (if it is not installed)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    figures = bench_block(opts.rounds, with_peft=not opts.skip_peft)
    figures.update(bench_create(max(3, opts.rounds // 2)))
    figures.update(threads=torch.get_num_threads(), rounds=opts.rounds, torch=torch.__version__)
    for key, value in figures.items():
        print(
            f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}", file=sys.stderr
        )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
