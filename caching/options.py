"""The options of cache_latents.py and cache_text_encoder_outputs.py, declared once (no torch: a bad option
answers at once). Both commands list their flags without sections, as they always have."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from hunyuan_model.encoder_options import TextEncoderOptions
from hv_common.cli import OneLineArgumentParser
from hv_common.option_types import integer
from hv_common.options import add_option_groups, config_from_values, option, shown_in

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

    vae: str = option(
        help="VAE: original pytorch_model.pt, a safetensors file or a diffusers folder", required=True
    )
    vae_dtype: str | None = option(
        None, "float32 | float16 | bfloat16 (default: float16 on GPU, float32 on CPU)"
    )
    vae_chunk_size: int | None = option(
        None, "accepted for musubi-tuner command lines; see docs", type=integer
    )
    vae_tiling: bool = option(False, "encode in spatial tiles (less memory)")
    vae_spatial_tile_sample_min_size: int = option(256, "tile size in pixels", type=integer)
    batch_size: int = option(1, "windows of the same bucket per VAE call", type=integer)
    device: str | None = option(None, DEVICE_HELP)
    seed: int = option(0, "seed of the latent samples (per item, reproducible)", type=integer)


@dataclass(frozen=True, kw_only=True)
class TextCacheOptions:
    """the text encoders' run"""

    text_encoder_dtype: str | None = option(None, "float32 | float16 | bfloat16 (default: float16 on GPU)")
    fp8_llm: bool = option(False, "(GPU issue) fp8 LLM weights; not implemented yet")
    batch_size: int = option(16, "captions per encoder call", type=integer)
    device: str | None = option(None, DEVICE_HELP)


@dataclass(frozen=True, kw_only=True)
class LatentCacheConfig:
    """Everything cache_latents.py is told."""

    dataset: DatasetCacheOptions = shown_in("")
    vae: LatentEncodeOptions = shown_in("")


@dataclass(frozen=True, kw_only=True)
class TextCacheConfig:
    """Everything cache_text_encoder_outputs.py is told."""

    dataset: DatasetCacheOptions = shown_in("")
    encoders: TextEncoderOptions = shown_in("")
    encoding: TextCacheOptions = shown_in("")


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
