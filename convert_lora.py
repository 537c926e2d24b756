"""Convert a LoRA between key layouts: see docs/interop.md.

python convert_lora.py --input demo/output/tiny_lora.safetensors --output demo/output/tiny_lora_comfy.safetensors \
    --target other
"""

import sys


def main(argv=None) -> int:
    from hv_common.cli import run_command
    from lora_files.convert import parse_options, run

    return run_command(lambda a: run(parse_options(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
