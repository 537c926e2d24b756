"""Write tiny random models for the demo and the tests: `python -m hunyuan_model.tiny --out DIR`.

DIR/tiny_dit.safetensors (the DiT, original checkpoint layout; seeded, the same bytes every time), and unless
--dit_only: DIR/vae (diffusers' AutoencoderKLHunyuanVideo), DIR/text_encoder (a Llama-architecture LLM) and
DIR/text_encoder_2 (a CLIP text model), each with its tokenizer, in the folder layouts the real ones come in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hv_common.safetensors_stream import write_safetensors_streaming

from .config import get_preset
from .model import build_dit
from .rope_source import rope_metadata

DIT_FILENAME = "tiny_dit.safetensors"


def tiny_dit_state_dict(seed: int = 0, preset: str = "tiny") -> dict[str, torch.Tensor]:
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_dit(get_preset(preset), device="cpu", dtype=torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    # contiguous copies: safetensors refuses views that share storage
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def write_tiny_dit(out_dir: str | Path, seed: int = 0) -> Path:
    path = Path(out_dir) / DIT_FILENAME
    sd = tiny_dit_state_dict(seed)
    # The RoPE split is stated, not left to the loader's rule. Our streaming writer, not safetensors': that
    # one writes the metadata map in hash order, so two keys would make the bytes differ from run to run.
    metadata = {"format": "pt", **rope_metadata(get_preset("tiny").rope_dim_list)}
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in sd.items()]
    return write_safetensors_streaming(path, specs, sd.__getitem__, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hunyuan_model.tiny", description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write tiny_dit.safetensors into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dit_only", action="store_true", help="write only the DiT (fast, no diffusers import)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        print(write_tiny_dit(out, args.seed))
        if not args.dit_only:
            from .tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae

            print(write_tiny_vae(out / "vae", args.seed))
            print(write_tiny_llm(out / "text_encoder", args.seed))
            print(write_tiny_clip(out / "text_encoder_2", args.seed))
    except OSError as e:
        print(f"error: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
