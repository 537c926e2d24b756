"""Encode the dataset's images and clips with the VAE into the cache: see docs/dataset.md.

python cache_latents.py --dataset_config configs/tiny_dataset.toml --vae demo/models/vae
"""

import sys


def main(argv=None) -> int:
    from caching.latents import build_parser, run
    from hv_common.cli import run_command

    return run_command(lambda a: run(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
