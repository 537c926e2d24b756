"""Encode the dataset's images and clips with the VAE into the cache: see docs/dataset.md.

python cache_latents.py --dataset_config configs/tiny_dataset.toml --vae demo/models/vae
"""

import sys


def main(argv=None) -> int:
    from caching.options import parse_latent_cache
    from hv_common.cli import run_command

    def command(args) -> int:
        config = parse_latent_cache(args)  # a bad option answers before torch is imported
        from caching.latents import run

        return run(config)

    return run_command(command, argv)


if __name__ == "__main__":
    sys.exit(main())
