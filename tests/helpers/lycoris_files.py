"""LoHa and LoKr files for the tiny DiT, in musubi-tuner's (and LyCORIS's kohya) layout, with random weights:
`lora_unet_<module, . -> _>.hada_w1_a` ... `.alpha`. No training needed; the tests compute the expected
weight update from the returned factors with the plain formulas.

    factors = write_loha(path, tiny_dit, rank=4, alpha=2.0)   # {module: {"hada_w1_a": ..., "alpha": ...}}
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from hunyuan_model.checkpoint import read_state_dict

Factors = dict[str, dict[str, torch.Tensor]]  # by module name (double_blocks.0.img_attn_qkv), then key


def linears(dit: Path) -> dict[str, tuple[int, int]]:
    """{module: (out, in)} of the tiny DiT's Linears in its double and single blocks."""
    return {
        k.removesuffix(".weight"): (v.shape[0], v.shape[1])
        for k, v in read_state_dict(dit, meta=True).items()
        if k.endswith(".weight") and v.ndim == 2 and k.startswith(("double_blocks.", "single_blocks."))
    }


def key_name(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def save(path: Path, factors: Factors, prefix: str | None = None) -> None:
    """prefix None: musubi-tuner's lora_unet_ names; else `<prefix>.<module>.<key>` (ComfyUI's `other`)."""
    tensors = {
        (f"{key_name(m)}.{k}" if prefix is None else f"{prefix}.{m}.{k}"): v.contiguous()
        for m, keys in factors.items()
        for k, v in keys.items()
    }
    save_file(tensors, str(path))


def write_loha(path: Path, dit: Path, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> Factors:
    g = torch.Generator().manual_seed(seed)
    factors: Factors = {}
    for module, (out, inp) in linears(dit).items():
        factors[module] = {
            "hada_w1_a": torch.randn(out, rank, generator=g) * 0.3,
            "hada_w1_b": torch.randn(rank, inp, generator=g) * 0.3,
            "hada_w2_a": torch.randn(out, rank, generator=g) * 0.3,
            "hada_w2_b": torch.randn(rank, inp, generator=g) * 0.3,
            "alpha": torch.tensor(alpha),
        }
    save(path, factors)
    return factors


def split(n: int) -> tuple[int, int]:
    """n = small x large, as balanced as n's divisors allow (e.g. 64 -> 8 x 8, 192 -> 12 x 16)."""
    small = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return small, n // small


def write_lokr(
    path: Path, dit: Path, mode: str = "low", rank: int = 2, alpha: float = 3.0, seed: int = 1
) -> Factors:
    """mode: "low" (musubi-tuner's usual: lokr_w1 full, lokr_w2_a @ lokr_w2_b), "full" (lokr_w1 and lokr_w2
    full: alpha is stored but does not count), "both" (LyCORIS's decompose_both: w1 and w2 low-rank)."""
    g = torch.Generator().manual_seed(seed)
    factors: Factors = {}
    for module, (out, inp) in linears(dit).items():
        (a, b), (c, d) = split(out), split(inp)
        keys: dict[str, torch.Tensor] = {"alpha": torch.tensor(alpha)}
        if mode == "both":
            keys["lokr_w1_a"] = torch.randn(a, rank, generator=g)
            keys["lokr_w1_b"] = torch.randn(rank, c, generator=g)
        else:
            keys["lokr_w1"] = torch.randn(a, c, generator=g)
        if mode == "full":
            keys["lokr_w2"] = torch.randn(b, d, generator=g) * 0.1
        else:
            keys["lokr_w2_a"] = torch.randn(b, rank, generator=g) * 0.3
            keys["lokr_w2_b"] = torch.randn(rank, d, generator=g) * 0.3
        factors[module] = keys
    save(path, factors)
    return factors


def loha_update(keys: dict[str, torch.Tensor]) -> torch.Tensor:
    """(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank."""
    rank = keys["hada_w1_b"].shape[0]
    w1 = keys["hada_w1_a"] @ keys["hada_w1_b"]
    w2 = keys["hada_w2_a"] @ keys["hada_w2_b"]
    return w1 * w2 * float(keys["alpha"]) / rank


def lokr_update(keys: dict[str, torch.Tensor]) -> torch.Tensor:
    """kron(w1, w2) * alpha / rank, or * 1 when both factors are full matrices."""
    w1 = keys["lokr_w1"] if "lokr_w1" in keys else keys["lokr_w1_a"] @ keys["lokr_w1_b"]
    w2 = keys["lokr_w2"] if "lokr_w2" in keys else keys["lokr_w2_a"] @ keys["lokr_w2_b"]
    low = keys.get("lokr_w1_a", keys.get("lokr_w2_a"))
    scale = 1.0 if low is None else float(keys["alpha"]) / low.shape[1]
    return torch.kron(w1, w2) * scale
