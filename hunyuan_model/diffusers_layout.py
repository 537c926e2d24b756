"""The module-level correspondence between our (original) names and diffusers' HunyuanVideoTransformer3DModel.

One table serves both directions and both weights and LoRA files (the interop issue maps LoRA keys with it).
Widths are always taken from the tensors, never hard-coded (diffusers' own converter assumes 3072).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModuleMap:
    ours: str
    theirs: tuple[str, ...]  # several when diffusers splits one of our fused projections
    swap_halves: bool = False  # final adaLN: we store (shift, scale), diffusers (scale, shift)


_REFINER = {
    "norm1": ("norm1",),
    "self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "self_attn_proj": ("attn.to_out.0",),
    "norm2": ("norm2",),
    "mlp.fc1": ("ff.net.0.proj",),
    "mlp.fc2": ("ff.net.2",),
    "adaLN_modulation.1": ("norm_out.linear",),
}
_DOUBLE = {
    "img_mod.linear": ("norm1.linear",),
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_q_norm": ("attn.norm_q",),
    "img_attn_k_norm": ("attn.norm_k",),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "txt_mod.linear": ("norm1_context.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_q_norm": ("attn.norm_added_q",),
    "txt_attn_k_norm": ("attn.norm_added_k",),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "q_norm": ("attn.norm_q",),
    "k_norm": ("attn.norm_k",),
    "modulation.linear": ("norm.linear",),
}
_TOP = {
    "img_in.proj": "x_embedder.proj",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}


def module_maps(n_refiner: int, n_double: int, n_single: int, guidance: bool = True) -> list[ModuleMap]:
    maps = [ModuleMap(o, (d,)) for o, d in _TOP.items() if guidance or not o.startswith("guidance_in")]
    maps.append(ModuleMap("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap_halves=True))
    groups = (
        (
            "txt_in.individual_token_refiner.blocks",
            "context_embedder.token_refiner.refiner_blocks",
            n_refiner,
            _REFINER,
        ),
        ("double_blocks", "transformer_blocks", n_double, _DOUBLE),
        ("single_blocks", "single_transformer_blocks", n_single, _SINGLE),
    )
    for ours_prefix, theirs_prefix, count, table in groups:
        for i in range(count):
            for o, parts in table.items():
                maps.append(
                    ModuleMap(f"{ours_prefix}.{i}.{o}", tuple(f"{theirs_prefix}.{i}.{p}" for p in parts))
                )
    return maps


def _count(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def maps_for_keys(keys: Iterable[str], diffusers: bool) -> list[ModuleMap]:
    keys = list(keys)
    if diffusers:
        counts = (
            "context_embedder.token_refiner.refiner_blocks",
            "transformer_blocks",
            "single_transformer_blocks",
        )
        guidance = any(k.startswith("time_text_embed.guidance_embedder.") for k in keys)
    else:
        counts = ("txt_in.individual_token_refiner.blocks", "double_blocks", "single_blocks")
        guidance = any(k.startswith("guidance_in.") for k in keys)
    n_refiner, n_double, n_single = (_count(keys, c) for c in counts)
    return module_maps(n_refiner, n_double, n_single, guidance=guidance)


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and fuse; keys the table does not know are kept as they are (the loader reports them)."""
    out: dict[str, torch.Tensor] = {}
    rest = dict(sd)
    for m in maps_for_keys(sd.keys(), diffusers=True):
        for suffix in ("weight", "bias"):
            names = [f"{p}.{suffix}" for p in m.theirs]
            if not all(n in rest for n in names):
                continue
            parts = [rest.pop(n) for n in names]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            out[f"{m.ours}.{suffix}"] = _swap(tensor) if m.swap_halves else tensor
    out.update(rest)
    return out


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and split; the split sizes come from the tensors (hidden width = last part's input width)."""
    out: dict[str, torch.Tensor] = {}
    rest = dict(sd)
    hidden = sd["img_in.proj.weight"].shape[0]
    for m in maps_for_keys(sd.keys(), diffusers=False):
        for suffix in ("weight", "bias"):
            name = f"{m.ours}.{suffix}"
            if name not in rest:
                continue
            tensor = rest.pop(name)
            if m.swap_halves:
                tensor = _swap(tensor)
            if len(m.theirs) == 1:
                out[f"{m.theirs[0]}.{suffix}"] = tensor
                continue
            sizes = [hidden] * (len(m.theirs) - 1)
            sizes.append(tensor.shape[0] - sum(sizes))
            for part_name, part in zip(m.theirs, tensor.split(sizes, dim=0), strict=True):
                out[f"{part_name}.{suffix}"] = part
    out.update(rest)
    return out
