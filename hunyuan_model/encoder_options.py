"""The text-encoder options shared by cache_text_encoder_outputs.py and hv_generate_video.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hv_common.options import option

if TYPE_CHECKING:
    import torch

    from hunyuan_model.text_encoders import HunyuanTextEncoders


DEFAULT_TILE_SIZE = 256  # pixels: musubi-tuner's VAE tile (spatial_tile_sample_min_size)


def vae_tile_size(vae_tiling: bool, vae_spatial_tile_sample_min_size: int | None) -> int | None:
    """The VAE's spatial tile in pixels, None for no tiling: musubi-tuner's rule for the caching script and the
    trainer, where giving --vae_spatial_tile_sample_min_size turns tiling on, as --vae_tiling does (at 256)."""
    if vae_spatial_tile_sample_min_size is not None:
        return vae_spatial_tile_sample_min_size
    return DEFAULT_TILE_SIZE if vae_tiling else None


@dataclass(frozen=True, kw_only=True)
class TextEncoderOptions:
    """text encoders"""

    text_encoder1: str = option(
        help="LLM (llava-llama-3): a transformers folder or a single safetensors file", required=True
    )
    text_encoder2: str = option(
        help="CLIP-L: a transformers folder or a single safetensors file", required=True
    )
    tokenizer1: str | None = option(
        None, "config + tokenizer folder for a single-file LLM (default: the local Hugging Face cache)"
    )
    tokenizer2: str | None = option(
        None, "config + tokenizer folder for a single-file CLIP (default: the local Hugging Face cache)"
    )

    def load(self, dtype: torch.dtype, device: torch.device, fp8_llm: bool = False) -> HunyuanTextEncoders:
        """The LLM and CLIP-L with their tokenizers, ready to encode; with fp8_llm the LLM's Linear weights
        in float8_e4m3fn (--fp8_llm)."""
        from hunyuan_model.text_encoders import HunyuanTextEncoders

        return HunyuanTextEncoders(
            self.text_encoder1,
            self.text_encoder2,
            dtype=dtype,
            device=device,
            llm_tokenizer=self.tokenizer1,
            clip_tokenizer=self.tokenizer2,
            fp8_llm=fp8_llm,
        )
