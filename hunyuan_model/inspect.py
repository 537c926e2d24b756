"""Tell what a DiT file is: `python -m hunyuan_model.inspect PATH [--json]`.

Reads headers only (safetensors) and prints the detected layout, the architecture, the matching preset
and the dtypes. A file that is not a HunyuanVideo DiT gets one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter

from .checkpoint import (
    check_keys,
    config_from_state_dict,
    detect_layout,
    pop_fp8_scales,
    read_state_dict,
    strip_prefix,
    to_original_layout,
)
from .errors import CheckpointError
from .model import build_dit
from .rope_source import read_rope_split


def describe(path: str) -> dict:
    raw = strip_prefix(read_state_dict(path, meta=True))
    try:
        layout = detect_layout(raw)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    sd = to_original_layout(raw, path)
    scales = pop_fp8_scales(sd, path)  # a scaled-fp8 file's per-Linear scales are no parameters
    stated = read_rope_split(path)
    config = config_from_state_dict(sd, path, stated)
    check_keys(build_dit(config, device="meta"), sd, path)
    dtypes = Counter(str(v.dtype).removeprefix("torch.") for v in sd.values())
    return {
        "path": path,
        "layout": layout,
        "preset": config.name,
        "parameters": sum(v.numel() for v in sd.values()),
        "dtypes": dict(dtypes),
        "fp8_scaled_linears": len(scales),
        "rope_split": "stated by the file" if stated is not None else "derived from the head width",
        "config": dataclasses.asdict(config),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hunyuan_model.inspect", description=__doc__)
    parser.add_argument("path", help="DiT checkpoint: .safetensors, .pt, or a diffusers folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        info = describe(args.path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
        return 0
    cfg = info["config"]
    print(f"{info['path']}: HunyuanVideo DiT, {info['layout']} layout, preset {info['preset']}")
    print(
        f"  {info['parameters'] / 1e9:.3f} B parameters, dtypes {info['dtypes']}, hidden {cfg['hidden_size']}, "
        f"{cfg['heads_num']} heads, {cfg['mm_double_blocks_depth']} double + {cfg['mm_single_blocks_depth']} single blocks"
    )
    print(f"  RoPE split (t, h, w) {cfg['rope_dim_list']}, {info['rope_split']}")
    if info["fp8_scaled_linears"]:
        print(f"  scaled fp8: {info['fp8_scaled_linears']} Linears carry a scale_weight")
    return 0


if __name__ == "__main__":
    sys.exit(main())
