"""convert_lora.py: a LoRA file from one key layout to another (see docs/interop.md).

--target other      diffusion_model.<module>.lora_A/B.weight: ComfyUI, diffusers' HunyuanVideo pipeline
--target default    lora_unet_<module>.lora_down/up.weight + .alpha: this trainer, musubi-tuner
--target diffusers  transformer.<diffusers module>.lora_A/B.weight: diffusers' load_lora_adapter at any width

The input may be in any of these layouts, or diffusion-pipe's transformer.<module>.lora_A/B.weight.
The weight update (B @ A x alpha / rank) is kept; the A/B layouts have no alpha, so it is folded in.
LoHa / LoKr (LyCORIS) modules keep their keys (hada_w1_a, lokr_w1, ..., alpha) under the default and `other`
prefixes, where ComfyUI reads them; diffusers' layout cannot hold them (one-line error).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hv_common.cli import OneLineArgumentParser
from hv_common.errors import UserError
from hv_common.options import add_options, option, options_from
from lora_files.io import check_fits, linear_shapes, load_lora, save_lora_file
from lora_files.layouts import PEFT_METADATA_KEY, WRITERS

logger = logging.getLogger(__name__)


def key_prefix(text: str) -> str:
    """A key prefix such as diffusion_model or transformer: not empty, without a leading or trailing dot."""
    if not text or text.startswith(".") or text.endswith(".") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a key prefix such as diffusion_model (no spaces, no leading or trailing dot), got {text!r}"
        )
    return text


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """convert_lora.py's options"""

    input: str = option(help="LoRA file (safetensors), any supported layout", required=True)
    output: str = option(help="where to write the converted LoRA (safetensors)", required=True)
    target: str = option(help="the layout to write", choices=tuple(WRITERS), required=True)
    diffusers_prefix: str | None = option(
        None,
        "the prefix of the written keys for --target other (default diffusion_model) or diffusers (default "
        "transformer)",
        type=key_prefix,
    )
    dit: str | None = option(
        None,
        "optional: the DiT the LoRA is for; checks that the LoRA fits it, and gives the MLP width when a "
        "diffusers file has LoRAs on attn.to_q/k/v but not on proj_mlp",
    )

    def __post_init__(self) -> None:
        if self.diffusers_prefix is not None and self.target == "default":
            raise UserError(
                "--diffusers_prefix names the prefix of --target other / diffusers keys; --target default "
                "writes lora_unet_ keys, which have none"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="convert_lora.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser, ConvertOptions, title="")
    return parser


def parse_options(argv: Sequence[str] | None = None) -> ConvertOptions:
    return options_from(ConvertOptions, build_parser().parse_args(argv))


def dit_shapes(dit: str) -> dict[str, tuple[int, int]]:
    """{module: (out, in)} of the DiT's Linears, from the file's headers (no weights are read)."""
    from hunyuan_model.checkpoint import read_state_dict, to_original_layout

    if not Path(dit).exists():
        raise UserError(f"--dit {dit}: no such file or folder")
    return linear_shapes(to_original_layout(read_state_dict(dit, meta=True), dit))


def run(options: ConvertOptions) -> int:
    shapes = dit_shapes(options.dit) if options.dit else None
    widths = {name: out for name, (out, _) in shapes.items()} if shapes else None
    lora = load_lora(options.input, widths)
    if shapes is not None and options.dit is not None:
        check_fits(lora, shapes, options.dit)
    tensors = WRITERS[options.target](lora.weights, options.diffusers_prefix)
    # Training metadata (ss_*) travels along; diffusers' saved LoraConfig does not: its alpha is folded now.
    metadata = {k: v for k, v in lora.metadata.items() if k != PEFT_METADATA_KEY}
    save_lora_file(options.output, tensors, metadata)
    logger.info(
        "%s (%s layout, %d modules) -> %s (%s layout, %d tensors)",
        options.input,
        lora.layout,
        len(lora.weights),
        options.output,
        options.target,
        len(tensors),
    )
    return 0
