"""The options of cache_latents.py and cache_text_encoder_outputs.py, declared once (no torch: a bad option
answers at once). Both commands list their flags without sections, as they always have."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from hunyuan_model.encoder_options import TextEncoderOptions, vae_tile_size
from hv_common.cli import OneLineArgumentParser
from hv_common.errors import UserError
from hv_common.option_types import integer, non_negative_int, positive_int
from hv_common.options import add_option_groups, config_from_values, option, shown_in

DEBUG_MODES = ("image", "console", "video")
CONSOLE_WIDTH = 80  # columns: musubi-tuner's default
DEVICE_HELP = "cuda, cuda:1, cpu (default: cuda when available)"


@dataclass(frozen=True, kw_only=True)
class DatasetCacheOptions:
    """the dataset and its cache files"""

    dataset_config: str = option(help="dataset TOML", required=True)
    skip_existing: bool = option(False, "keep valid, current cache files")
    keep_cache: bool = option(
        False, "keep cache files no item of the dataset produces any more (default: delete them)"
    )


@dataclass(frozen=True, kw_only=True)
class LatentEncodeOptions:
    """the VAE"""

    vae: str | None = option(
        None,
        "VAE: original pytorch_model.pt, a safetensors file or a diffusers folder (needed unless --debug_mode)",
    )
    vae_dtype: str | None = option(
        None, "float32 | float16 | bfloat16 (default: float16 on GPU, float32 on CPU)"
    )
    # musubi-tuner's VAE memory options (hunyuan_model/vae.py): the same latents, less memory.
    vae_chunk_size: int | None = option(
        None,
        "chunk size for CausalConv3d in VAE: each causal 3D conv of an input at least 1.5 chunks wide computes "
        "in width slices of N columns (same result, less memory; 0: off)",
        type=non_negative_int,
        metavar="N",
    )
    vae_tiling: bool = option(
        False,
        "enable spatial tiling for VAE (tiles of --vae_spatial_tile_sample_min_size, default 256 pixels); "
        "automatically enabled when --vae_spatial_tile_sample_min_size is given",
    )
    vae_spatial_tile_sample_min_size: int | None = option(
        None,
        "spatial tile sample min size for VAE, default 256 (giving it enables tiling)",
        type=positive_int,
    )
    batch_size: int = option(1, "windows of the same bucket per VAE call", type=integer)
    device: str | None = option(None, DEVICE_HELP)
    seed: int = option(0, "seed of the latent samples (per item, reproducible)", type=integer)
    disable_cudnn_backend: bool = option(
        False,
        "Disable CUDNN PyTorch backend (torch.backends.cudnn.enabled = False). May be useful for AMD GPUs.",
    )

    @property
    def tile_size(self) -> int | None:
        """Spatial tile size in pixels, None without tiling (musubi-tuner: a size given turns tiling on)."""
        return vae_tile_size(self.vae_tiling, self.vae_spatial_tile_sample_min_size)


@dataclass(frozen=True, kw_only=True)
class LatentDebugOptions:
    """musubi-tuner's --debug_mode: show the dataset's items instead of caching them"""

    debug_mode: str | None = option(
        None,
        "show the items instead of caching: image (PNGs of each item's first and last frame, saved in "
        "<cache_directory>/debug_images/; musubi-tuner opens a window), console (text art in the terminal; "
        "pip install ascii-magic), video (an .mp4 / .jpg beside each cache file name)",
        choices=DEBUG_MODES,
    )
    console_width: int = option(CONSOLE_WIDTH, "debug mode: console width", type=positive_int)
    console_back: str | None = option(
        None, "debug mode: console background color, one of ascii_magic.Back (black, red, ..., white)"
    )
    console_num_images: int | None = option(
        None,
        "debug mode: not interactive, number of images to show for each dataset",
        type=positive_int,
    )


@dataclass(frozen=True, kw_only=True)
class CacheRunOptions:
    """the caching run"""

    num_workers: int | None = option(
        None, "number of workers for dataset. default is cpu count-1", type=positive_int
    )

    @property
    def workers(self) -> int:
        """The threads that read the dataset: --num_workers, or one less than the CPUs (at least 1)."""
        return self.num_workers if self.num_workers is not None else max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True, kw_only=True)
class TextCacheOptions:
    """the text encoders' run"""

    text_encoder_dtype: str | None = option(None, "float32 | float16 | bfloat16 (default: float16 on GPU)")
    fp8_llm: bool = option(
        False,
        "use fp8 for Text Encoder 1 (LLM): its Linear weights stored in float8_e4m3fn (about half the memory "
        "of float16), computed in --text_encoder_dtype",
    )
    batch_size: int = option(16, "captions per encoder call", type=integer)
    device: str | None = option(None, DEVICE_HELP)


@dataclass(frozen=True, kw_only=True)
class LatentCacheConfig:
    """Everything cache_latents.py is told."""

    dataset: DatasetCacheOptions = shown_in("")
    vae: LatentEncodeOptions = shown_in("")
    debug: LatentDebugOptions = shown_in("")
    run: CacheRunOptions = shown_in("")

    def __post_init__(self) -> None:
        if self.vae.vae is None and self.debug.debug_mode is None:
            raise UserError("--vae is needed to cache latents (only --debug_mode runs without one)")
        debug = self.debug
        console = {
            "--console_width": debug.console_width != CONSOLE_WIDTH,
            "--console_back": debug.console_back is not None,
            "--console_num_images": debug.console_num_images is not None,
        }
        given = [flag for flag, set_ in console.items() if set_]
        if given and debug.debug_mode != "console":
            raise UserError(f"{', '.join(given)}: only with --debug_mode console")


@dataclass(frozen=True, kw_only=True)
class TextCacheConfig:
    """Everything cache_text_encoder_outputs.py is told."""

    dataset: DatasetCacheOptions = shown_in("")
    encoders: TextEncoderOptions = shown_in("")
    encoding: TextCacheOptions = shown_in("")
    run: CacheRunOptions = shown_in("")


LATENTS_DESCRIPTION = (
    "cache_latents.py: every item of the dataset TOML through the VAE, "
    "one safetensors file per item and window."
)
TEXT_DESCRIPTION = (
    "cache_text_encoder_outputs.py: every caption through the LLM and CLIP-L, one safetensors file per item."
)


def _parser(prog: str, description: str, config_cls: type) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=prog, description=description)
    add_option_groups(parser, config_cls, sections=[""])
    return parser


def latent_cache_parser() -> argparse.ArgumentParser:
    return _parser("cache_latents.py", LATENTS_DESCRIPTION, LatentCacheConfig)


def text_cache_parser() -> argparse.ArgumentParser:
    return _parser("cache_text_encoder_outputs.py", TEXT_DESCRIPTION, TextCacheConfig)


def parse_latent_cache(argv: Sequence[str] | None = None) -> LatentCacheConfig:
    return config_from_values(LatentCacheConfig, vars(latent_cache_parser().parse_args(argv)))


def parse_text_cache(argv: Sequence[str] | None = None) -> TextCacheConfig:
    return config_from_values(TextCacheConfig, vars(text_cache_parser().parse_args(argv)))
