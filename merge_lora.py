"""Fold LoRAs into a DiT and write the merged DiT: see docs/interop.md.

python merge_lora.py --dit demo/models/tiny_dit.safetensors --lora_weight demo/output/tiny_lora.safetensors \
    --lora_multiplier 0.8 --save_merged_model demo/output/tiny_dit_merged.safetensors
"""

import sys


def main(argv=None) -> int:
    from hv_common.cli import run_command
    from lora_files.merge import parse_options, run

    return run_command(lambda a: run(parse_options(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
