"""convert_lora.py: a LoRA file from one key layout to another (see docs/interop.md).

--target other      diffusion_model.<module>.lora_A/B.weight: ComfyUI, diffusers' HunyuanVideo pipeline
--target default    lora_unet_<module>.lora_down/up.weight + .alpha: this trainer, musubi-tuner
--target diffusers  transformer.<diffusers module>.lora_A/B.weight: diffusers' load_lora_adapter at any width

The input may be in any of these layouts, or diffusion-pipe's transformer.<module>.lora_A/B.weight.
The weight update (B @ A x alpha / rank) is kept; the A/B layouts have no alpha, so it is folded in.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hv_common.cli import OneLineArgumentParser
from hv_common.errors import UserError
from lora_files.io import check_fits, linear_shapes, load_lora, save_lora_file
from lora_files.layouts import PEFT_METADATA_KEY, WRITERS

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="convert_lora.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--input", required=True, help="LoRA file (safetensors), any supported layout")
    p.add_argument("--output", required=True, help="where to write the converted LoRA (safetensors)")
    p.add_argument("--target", required=True, choices=list(WRITERS), help="the layout to write")
    p.add_argument("--dit", default=None,
                   help="optional: the DiT the LoRA is for; checks that the LoRA fits it, and gives the MLP width "
                        "when a diffusers file has LoRAs on attn.to_q/k/v but not on proj_mlp")  # fmt: skip
    return p


def dit_shapes(dit: str) -> dict[str, tuple[int, int]]:
    """{module: (out, in)} of the DiT's Linears, from the file's headers (no weights are read)."""
    from hunyuan_model.checkpoint import read_state_dict, to_original_layout

    if not Path(dit).exists():
        raise UserError(f"--dit {dit}: no such file or folder")
    return linear_shapes(to_original_layout(read_state_dict(dit, meta=True), dit))


def run(args: argparse.Namespace) -> int:
    shapes = dit_shapes(args.dit) if args.dit else None
    widths = {name: out for name, (out, _) in shapes.items()} if shapes else None
    lora = load_lora(args.input, widths)
    if shapes is not None:
        check_fits(lora, shapes, args.dit)
    tensors = WRITERS[args.target](lora.weights)
    # Training metadata (ss_*) travels along; diffusers' saved LoraConfig does not: its alpha is folded now.
    metadata = {k: v for k, v in lora.metadata.items() if k != PEFT_METADATA_KEY}
    save_lora_file(args.output, tensors, metadata)
    logger.info("%s (%s layout, %d modules) -> %s (%s layout, %d tensors)", args.input, lora.layout,
                len(lora.weights), args.output, args.target, len(tensors))  # fmt: skip
    return 0
