"""Encode the dataset's captions with the LLM and CLIP-L into the cache: see docs/dataset.md.

python cache_text_encoder_outputs.py --dataset_config configs/tiny_dataset.toml \
    --text_encoder1 demo/models/text_encoder --text_encoder2 demo/models/text_encoder_2
"""

import sys


def main(argv=None) -> int:
    from caching.text import build_parser, run
    from hv_common.cli import run_command

    return run_command(lambda a: run(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
