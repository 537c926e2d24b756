"""Shared by tests/hunyuan_model/test_fp8.py and test_fp8_commands.py: which tiny-DiT weights become float8 (the
rule written apart from hunyuan_model/fp8.py), a tiny DiT with a trained model's small weights, an fp8 file as
ComfyUI ships it, the relative error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from hunyuan_model.config import get_preset
from hunyuan_model.fp8 import (
    FP8_DTYPE,
)
from hunyuan_model.model import build_dit
from hunyuan_model.tiny import tiny_dit_state_dict


def rule_keys() -> frozenset[str]:
    """The rule, written apart from hunyuan_model/fp8.py: weights of the Linears in the blocks, modulation excepted."""
    model = build_dit(get_preset("tiny"), device="meta")
    return frozenset(
        f"{name}.weight"
        for name, m in model.named_modules()
        if type(m) is nn.Linear
        and name.split(".")[0] in ("double_blocks", "single_blocks")
        and not name.endswith(("img_mod.linear", "txt_mod.linear", "modulation.linear"))
    )


FP8_KEYS = rule_keys()
TINY_FP8_WEIGHTS = 2 * 8 + 2 * 2  # tiny: 2 double blocks x 8 Linears + 2 single blocks x 2 (the LoRA targets)


def realistic_sd(seed: int = 1) -> dict[str, torch.Tensor]:
    """The tiny DiT with block weights as small as a trained model's, each row its own magnitude (2e-3..5e-2):
    where plain fp8 loses precision (subnormals) and a per-row scale does not."""
    sd = tiny_dit_state_dict(seed)
    g = torch.Generator().manual_seed(seed)
    for key, value in sd.items():
        if key in FP8_KEYS:
            rows = torch.empty(value.shape[0], 1).uniform_(-6.2, -3.0, generator=g).exp()
            sd[key] = torch.randn(value.shape, generator=g) * rows
    return sd


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def fp8_file(tmp_path: Path, scaled: bool) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DiT file as ComfyUI ships it: block Linear weights in float8 (+ scalar `scale_weight` if scaled), the rest
    bf16. Returns the path and the weights it stands for (float32, scale applied)."""
    sd, stored = realistic_sd(), {}
    for key, value in sd.items():
        if key in FP8_KEYS:
            scale = value.abs().max() / 448 if scaled else torch.tensor(1.0)
            stored[key] = (value / scale).to(FP8_DTYPE)
            sd[key] = stored[key].float() * scale
            if scaled:
                stored[key.removesuffix("weight") + "scale_weight"] = scale.reshape(1)
        else:
            stored[key] = value.to(torch.bfloat16)
            sd[key] = stored[key].float()
    stored = {f"model.diffusion_model.{k}": v for k, v in stored.items()}
    if scaled:
        stored["scaled_fp8"] = torch.empty(0, dtype=FP8_DTYPE)  # ComfyUI's marker
    path = tmp_path / f"dit_fp8_e4m3fn{'_scaled' if scaled else ''}.safetensors"
    save_file(stored, str(path))
    return path, sd
