"""Encode the dataset's captions with the LLM and CLIP-L into the cache: see docs/dataset.md.

python cache_text_encoder_outputs.py --dataset_config configs/tiny_dataset.toml \
    --text_encoder1 demo/models/text_encoder --text_encoder2 demo/models/text_encoder_2
"""

import sys


def main(argv=None) -> int:
    from caching.options import parse_text_cache
    from hv_common.cli import run_command

    def command(args) -> int:
        config = parse_text_cache(args)  # a bad option answers before torch is imported
        from caching.text import run

        return run(config)

    return run_command(command, argv)


if __name__ == "__main__":
    sys.exit(main())
