"""Tiny, real stand-ins for the VAE and the two text encoders: the same classes and code paths as the real
models (diffusers' AutoencoderKLHunyuanVideo, a Llama-architecture LLM, a CLIP text model), only smaller, with
tokenizers built here from a small vocabulary: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hv_common.atomic import atomic_dir

from .text_encoders import VIDEO_PROMPT_TEMPLATE

LLM_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
_CORPUS = [
    VIDEO_PROMPT_TEMPLATE.format(""),
    "a red ball rolls across a blue floor while the camera pans slowly to the left",
    "a green square moves up and down in front of a white wall, soft light, static camera",
    "a cat walks through a sunny garden, close-up, shallow depth of field, cinematic style",
]


def _seeded(seed: int):
    torch.manual_seed(seed)


def _bpe_tokenizer(specials: list[str], bos: str, eos: str | None, pad: str):
    """A byte-level BPE tokenizer trained on a fixed corpus (deterministic), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    single = f"{bos} $A" + (f" {eos}" if eos else "")
    special_ids = [(t, tok.token_to_id(t)) for t in {bos, eos} if t]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special_ids)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos or pad, pad_token=pad, padding_side="right"
    )


def write_tiny_llm(out_dir: Path, seed: int = 0, hidden: int = 32) -> Path:
    from transformers import LlamaConfig, LlamaModel

    tokenizer = _bpe_tokenizer(LLM_SPECIALS, bos="<|begin_of_text|>", eos=None, pad="<|end_of_text|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seeded(seed)
    model = LlamaModel(config)
    with atomic_dir(out_dir) as tmp:  # a killed run never leaves a half-written model folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def write_tiny_clip(out_dir: Path, seed: int = 0, hidden: int = 32) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _bpe_tokenizer(CLIP_SPECIALS, bos="<|startoftext|>", eos="<|endoftext|>", pad="<|endoftext|>")
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _seeded(seed)
    model = CLIPTextModel(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def write_tiny_vae(out_dir: Path, seed: int = 0) -> Path:
    """Four 32-channel levels, one resnet each: the real 8x spatial and 4x temporal compression, 16 channels."""
    from diffusers.models import AutoencoderKLHunyuanVideo  # typed there (see vae.py)

    _seeded(seed)
    vae = AutoencoderKLHunyuanVideo(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=32
    )
    with atomic_dir(out_dir) as tmp:
        vae.save_pretrained(tmp)
    return out_dir
