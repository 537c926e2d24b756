"""merge_lora.py: fold LoRAs into a DiT's weights and write the merged DiT (original layout, safetensors).

The DiT is streamed: each tensor is read, merged (in fp32) and written before the next is read, so the 13 B
model is never in memory twice (nor once). Every LoRA is checked against the DiT before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hunyuan_model.fp8 import DENSE_DTYPE, FLOAT8_DTYPES, dense_dtype, dequantize
from hv_common.cli import OneLineArgumentParser
from hv_common.devices import parse_dtype, pick_device
from hv_common.errors import UserError
from hv_common.option_types import integer, number
from hv_common.options import add_options, option, options_from
from hv_common.safetensors_stream import write_safetensors_streaming
from lora_files.apply import by_module, merged_weight
from lora_files.io import linear_shapes, load_checked, multipliers

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MergeOptions:
    """merge_lora.py's options"""

    dit: str = option(help="the base DiT: any layout --dit accepts elsewhere", required=True)
    lora_weight: tuple[str, ...] = option(
        (), "LoRA files (any layout convert_lora.py reads, LoHa / LoKr too); none: the DiT is rewritten as is"
    )
    lora_multiplier: tuple[float, ...] | None = option(
        None, "one per LoRA file, in order; files without one get 1.0", nargs="+", type=number
    )
    save_merged_model: str = option(help="output safetensors file (original layout)", required=True)
    save_dtype: str | None = option(None, "float32 | float16 | bfloat16 (default: the DiT's dtypes)")
    device: str | None = option(
        None, "where the merge arithmetic runs: cpu, cuda, cuda:N (default: cuda if any)"
    )
    dit_in_channels: int = option(
        16, "the DiT's input channels: 16, 32 for SkyReels V1 I2V (checked against --dit)", type=integer
    )

    def __post_init__(self) -> None:
        out, dit = Path(self.save_merged_model), Path(self.dit)
        if out.exists() and dit.exists() and out.resolve() == dit.resolve():
            raise UserError(
                f"--save_merged_model {out}: that is the input DiT; write the merged model elsewhere"
            )
        self.multipliers()  # one per file, or the error now

    def multipliers(self) -> list[float]:
        """One multiplier per LoRA file (1.0 each unless given)."""
        return multipliers(self.lora_weight, self.lora_multiplier, fill=True)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="merge_lora.py", description=__doc__)
    add_options(parser, MergeOptions, title="")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> MergeOptions:
    return options_from(MergeOptions, build_parser().parse_args(argv))


def run(options: MergeOptions) -> int:
    from hunyuan_model.checkpoint import check_keys, config_from_state_dict
    from hunyuan_model.lazy_checkpoint import LazyDiT
    from hunyuan_model.model import build_dit
    from hunyuan_model.rope_source import log_if_derived, read_rope_split, rope_metadata

    out, dit_path = Path(options.save_merged_model), options.dit
    mults = options.multipliers()
    save_dtype = parse_dtype(options.save_dtype, torch.float32) if options.save_dtype else None
    device = pick_device(options.device)
    with LazyDiT(dit_path) as dit:
        meta, scaled = _without_fp8_scales(dit.meta_state_dict())
        stated = read_rope_split(dit_path)
        config = config_from_state_dict(meta, dit_path, stated)
        if config.in_channels != options.dit_in_channels:  # musubi-tuner builds the DiT with this many
            raise UserError(
                f"--dit_in_channels {options.dit_in_channels}: --dit {dit_path} has {config.in_channels} input "
                f"channels; pass --dit_in_channels {config.in_channels}"
            )
        check_keys(build_dit(config, device="meta"), meta, dit_path)
        updates = by_module(load_checked(options.lora_weight, mults, linear_shapes(meta), dit_path))

        def dtype_of(t: torch.Tensor) -> torch.dtype:
            if save_dtype is not None and t.is_floating_point():
                return save_dtype
            # a LoRA update is far below fp8's rounding step: merged float8 weights are written dense
            return dense_dtype(t.dtype)

        specs = [(k, dtype_of(meta[k]), tuple(meta[k].shape)) for k in sorted(meta)]
        if any(meta[k].dtype in FLOAT8_DTYPES for k in meta):
            logger.info(
                "%s: float8 weights are written as %s, scales applied (load the merged file with "
                "--fp8_scaled to store them in fp8 again)",
                dit_path,
                save_dtype or DENSE_DTYPE,
            )
        bar = tqdm(total=len(specs), desc="merging", leave=False)

        def produce(key: str) -> torch.Tensor:
            bar.update()
            tensor = dit.get(key)
            name = key.removesuffix(".weight")
            if tensor.dtype in FLOAT8_DTYPES:
                scale = _scale_of(dit, name, tensor, dit_path) if name in scaled else None
                tensor = dequantize(tensor, scale, torch.float32)
            if key.endswith(".weight") and name in updates:
                tensor = merged_weight(tensor.to(device), updates[name])
            return tensor.to(dtype_of(meta[key])).cpu()

        record = [
            {"file": Path(f).name, "multiplier": m} for f, m in zip(options.lora_weight, mults, strict=True)
        ]
        # the split the base DiT states or the one it was loaded with: the merged file says it either way
        metadata = {"format": "pt", "merged_loras": json.dumps(record), **rope_metadata(config.rope_dim_list)}
        write_safetensors_streaming(out, specs, produce, metadata)
        bar.close()
        log_if_derived(config.head_dim, stated, dit_path)
    logger.info("wrote %s (%d LoRA modules merged)", out, len(updates))
    return 0


def _without_fp8_scales(meta: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """A scaled-fp8 file's weights without its `<linear>.scale_weight` keys and ComfyUI's marker, and the
    Linears those scales belong to (applied while merging)."""
    from hunyuan_model.fp8 import COMFY_MARKER_KEYS, INPUT_SCALE_KEYS, SCALE_KEY

    suffix = "." + SCALE_KEY
    scaled = {k.removesuffix(suffix) for k in meta if k.endswith(suffix)}
    dropped = {k for k in meta if k.endswith(suffix) or k.rpartition(".")[2] in INPUT_SCALE_KEYS}
    weights = {k: v for k, v in meta.items() if k not in dropped and k not in COMFY_MARKER_KEYS}
    return weights, scaled


def _scale_of(dit, name: str, weight: torch.Tensor, source: str) -> torch.Tensor:
    from hunyuan_model.fp8 import SCALE_KEY, normalize_scale

    scale = normalize_scale(dit.get(f"{name}.{SCALE_KEY}"), weight.shape[0])
    if scale is None:
        raise UserError(
            f"{source}: {name}.{SCALE_KEY} is no scale of {name}.weight (a scalar or one per row)"
        )
    return scale
