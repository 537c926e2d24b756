"""One LoRA training step of the full-width HunyuanVideo DiT on a GPU: s/step, peak memory, MFU.

The GPU benchmark, prepared to run in one go on a machine with an H100/H200 (see DEVELOPERS.md):
the 720p-layout DiT (13 B, 20 double + 40 single blocks) with random weights (nothing to download), bf16,
the latent of a 544x960x33 video (16 x 9 x 68 x 120, 18,360 image tokens) and 256 text tokens, LoRA rank 32
on every default target, AdamW, gradient checkpointing, 20 steps after warm-up.

    python bench/gpu_step.py [--variants base,swap20,fp8,fp8_swap20] [--steps 20] [--warmup 3]
                             [--attn sdpa|flash_attn|sage_attn|xformers|split_attn] [--compile]
    python bench/gpu_step.py --preset tiny --device cpu --width 64 --height 64 --frames 5 --steps 2  # smoke

Variants (comma-separated, run in this order in one process, each on a freshly built model):
  base        bf16 weights, every block on the GPU.
  swapN       bf16, --blocks_to_swap N (e.g. swap20).
  fp8         --fp8_scaled weights (block Linears in float8_e4m3fn with a per-row scale).
  fp8_swapN   both.
Per variant: s/step (min and median over the timed steps), peak allocated memory during the steps (from
torch.cuda.reset_peak_memory_stats after set-up), the memory estimate (memory/estimate.py) beside
it, and MFU = useful FLOP/s over the card's dense bf16 peak. Useful FLOPs follow the issue's convention:
3 x the forward FLOPs (a frozen base with LoRA: forward, grad wrt inputs, LoRA grads); the forward FLOPs
are counted by torch.utils.flop_counter on one forward of the real shapes. With gradient checkpointing
the card also runs a 4th (recomputed) forward: hfu counts it. slowdown_vs_base compares s/step to `base`.
The last line on stdout is one JSON object with every variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hunyuan_model.config import DEFAULT_EXCLUDE_PATTERNS, PRESETS, TARGET_BLOCK_CLASSES  # noqa: E402
from hunyuan_model.model import build_dit  # noqa: E402
from networks.lora import create_network  # noqa: E402

# Dense bf16 peak (no sparsity) of the cards this is run on, by a substring of torch's device name.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_variant(name: str) -> tuple[bool, int]:
    """'fp8_swap20' -> (fp8, 20)."""
    fp8 = name.startswith("fp8")
    rest = name[3:].lstrip("_") if fp8 else name
    if rest in ("", "base"):
        return fp8, 0
    if rest.startswith("swap") and rest[4:].isdigit():
        return fp8, int(rest[4:])
    raise SystemExit(f"unknown variant {name!r}: use base, swapN, fp8 or fp8_swapN")


def build_model(preset: str, device: torch.device, dtype: torch.dtype, fp8: bool, swap: int, attn: str):
    from hunyuan_model.attention import set_attention_backend
    from hunyuan_model.fp8 import quantize_linears

    config = PRESETS[preset]
    model = build_dit(config, device="meta")
    model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.zero_()
    model.to(dtype)
    if fp8:
        quantize_linears(model, scaled=True)
    model.requires_grad_(False)
    model.enable_gradient_checkpointing()
    set_attention_backend(model, attn)
    return config, model


def inputs(config, batch: int, width: int, height: int, frames: int, text_tokens: int, device, dtype):
    latent_frames = (frames - 1) // 4 + 1
    shape = (batch, config.in_channels, latent_frames, height // 8, width // 8)
    g = torch.Generator().manual_seed(1)

    def randn(*size: int) -> torch.Tensor:
        return (
            torch.empty(size, device="meta", dtype=dtype)
            if device == "meta"
            else torch.randn(size, generator=g).to(device, dtype)
        )

    x, target = randn(*shape), randn(*shape)
    llm = randn(batch, text_tokens, config.text_states_dim)
    # every token valid: a batch of one holds no padding (collate pads to the longest prompt of the batch)
    mask = torch.ones(batch, text_tokens, dtype=torch.bool, device=device)
    clip = randn(batch, config.text_states_dim_2)
    t = torch.full((batch,), 500.0, device=device)
    guidance = torch.full((batch,), 1000.0, device=device, dtype=dtype)
    return (x, t, llm, mask, clip, guidance), target


def model_forward_flops(a: argparse.Namespace) -> int:
    """Forward FLOPs of the bf16 DiT with its LoRA at these shapes, counted on the meta device (no compute):
    the same model FLOPs for every variant, whatever fp8 or swap add around them."""
    from torch.utils.flop_counter import FlopCounterMode

    config = PRESETS[a.preset]
    model = build_dit(config, device="meta", dtype=torch.bfloat16)
    network = create_network(
        1.0,
        a.rank,
        a.rank,
        model,
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        device="meta",
    )
    network.apply_to(model)
    model_inputs, _ = inputs(
        config, a.batch, a.width, a.height, a.frames, a.text_tokens, "meta", torch.bfloat16
    )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*model_inputs)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_variant(name: str, a: argparse.Namespace, device: torch.device) -> dict:
    fp8, swap = parse_variant(name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config, model = build_model(a.preset, device, dtype, fp8, swap, a.attn)
    network = create_network(
        1.0,
        a.rank,
        a.rank,
        model,
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        device=device,
    )
    network.apply_to(model)
    if swap:
        model.enable_block_swap(swap, device)
    if a.compile:
        model.compile_blocks(backend=a.compile_backend)
    optimizer = torch.optim.AdamW(network.prepare_optimizer_params(1e-4), lr=1e-4)
    model_inputs, target = inputs(config, a.batch, a.width, a.height, a.frames, a.text_tokens, device, dtype)
    fwd_flops = a.forward_flops

    def step() -> float:
        pred = model(*model_inputs)
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(a.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.steps):
        start = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - start)
        log(f"{name}: step {i + 1}/{a.steps} {times[-1]:.3f} s loss {loss:.4f}")
    result = {
        "variant": name,
        "fp8_scaled": fp8,
        "blocks_to_swap": swap,
        "attn": a.attn,
        "compile": a.compile,
        "s_per_step_min": min(times),
        "s_per_step_median": statistics.median(times),
        "forward_tflop": fwd_flops / 1e12,
        "lora_params": sum(p.numel() for p in network.parameters()),
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = a.peak_tflops * 1e12 if a.peak_tflops else card_peak()
        if peak:
            result["mfu"] = 3 * fwd_flops / result["s_per_step_median"] / peak
            result["hfu"] = 4 * fwd_flops / result["s_per_step_median"] / peak
    est = memory_estimate(config, network, a, fp8, swap, 2 if dtype == torch.bfloat16 else 4)
    result["estimate_gib"] = est.total / 2**30
    if device.type == "cuda":
        from memory.estimate import compare_with_cuda

        result["estimate_vs_measured"] = compare_with_cuda(est)["ratio"]
    return result  # the model goes with this frame; main() empties the CUDA cache before the next variant


def card_peak() -> float | None:
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def memory_estimate(config, network, a: argparse.Namespace, fp8: bool, swap: int, act_bytes: int):
    """memory/estimate.py's figure for this very step (no autocast: the DiT itself is bf16)."""
    from memory.estimate import LoRAInfo, Settings, Workload, dit_shapes, estimate

    modules = tuple(
        (name, lora.in_features, lora.out_features, lora.lora_dim)
        for name, lora in zip(network.module_names, network.loras, strict=True)
    )
    settings = Settings(
        weight_bytes=act_bytes,
        act_bytes=act_bytes,
        autocast=False,
        fp8_base=fp8,
        fp8_scaled=fp8,
        blocks_to_swap=swap,
        gradient_checkpointing=True,
    )
    work = Workload(a.width, a.height, a.frames, a.batch, a.text_tokens)
    return estimate(config, dit_shapes(build_dit(config, device="meta")), LoRAInfo(modules), work, settings)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="base,swap20,fp8,fp8_swap20")
    p.add_argument("--preset", default="hunyuan-video-t2v-720p", choices=sorted(PRESETS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--width", type=int, default=960)
    p.add_argument("--height", type=int, default=544)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text_tokens", type=int, default=256)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile_backend", default="inductor")
    p.add_argument("--peak_tflops", type=float, help="the card's dense bf16 peak, if not in PEAK_BF16_FLOPS")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        log(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    a.forward_flops = model_forward_flops(a)
    log(f"forward: {a.forward_flops / 1e12:.2f} TFLOP (counted on the meta device)")
    results = []
    for name in a.variants.split(","):
        try:
            results.append(run_variant(name.strip(), a, device))
        except torch.OutOfMemoryError as e:
            results.append({"variant": name, "error": f"out of memory: {str(e).splitlines()[0]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log(json.dumps(results[-1]))
    base = next((r for r in results if r.get("variant") == "base" and "s_per_step_median" in r), None)
    for r in results:
        if base and "s_per_step_median" in r:
            r["slowdown_vs_base"] = r["s_per_step_median"] / base["s_per_step_median"]
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
