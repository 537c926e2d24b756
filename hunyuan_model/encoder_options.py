"""The text-encoder options shared by cache_text_encoder_outputs.py and hv_generate_video.py."""

from __future__ import annotations

import argparse


def add_text_encoder_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--text_encoder1",
        required=True,
        help="LLM (llava-llama-3): a transformers folder or a single safetensors file",
    )
    parser.add_argument(
        "--text_encoder2", required=True, help="CLIP-L: a transformers folder or a single safetensors file"
    )
    parser.add_argument(
        "--tokenizer1",
        default=None,
        help="config + tokenizer folder for a single-file LLM (default: the local Hugging Face cache)",
    )
    parser.add_argument(
        "--tokenizer2",
        default=None,
        help="config + tokenizer folder for a single-file CLIP (default: the local Hugging Face cache)",
    )
