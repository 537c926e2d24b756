"""HunyuanVideo's two text encoders through transformers: the LLaVA-Llama-3 LLM and CLIP-L.

As the original code does: the LLM reads the prompt inside the video prompt template, its third-to-last hidden
layer is taken (hidden_state_skip_layer=2, no final norm), and the template's tokens are cropped off together
with the attention mask; CLIP-L gives its pooled output. transformers is imported only when needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

logger = logging.getLogger(__name__)

# The original "dit-llm-encode-video" template.
VIDEO_PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
LLM_MAX_TOKENS = 256  # prompt tokens kept after the template crop
HIDDEN_STATE_SKIP_LAYER = 2
CLIP_MAX_TOKENS = 77


@dataclass
class TextEmbeddings:
    llm: torch.Tensor  # (B, L, llm_width), template cropped
    llm_mask: torch.Tensor  # (B, L) bool
    clip_pooled: torch.Tensor  # (B, clip_width)


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers 4.56 renamed torch_dtype to dtype (the old name warns in 5.x)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


@dataclass(frozen=True)
class _Encoder:
    """What a single-file encoder needs besides its weights, and where else to find it."""

    what: str  # "LLM text encoder"
    flag: str  # "--tokenizer1"
    example: str  # a folder that has it
    # (repo, config subfolder, tokenizer subfolder) in the local Hugging Face cache, first found wins
    cache: tuple[tuple[str, str, str], ...]


HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
_LLM = _Encoder(
    "LLM text encoder",
    "--tokenizer1",
    "ckpts/text_encoder",
    ((HUNYUAN_REPO, "text_encoder", "tokenizer"), ("xtuner/llava-llama-3-8b-v1_1-transformers", "", "")),
)
_CLIP = _Encoder(
    "CLIP text encoder",
    "--tokenizer2",
    "ckpts/text_encoder_2",
    ((HUNYUAN_REPO, "text_encoder_2", "tokenizer_2"), ("openai/clip-vit-large-patch14", "", "")),
)


def _hf_cache_dir() -> str:
    """Read at call time: HF_HUB_CACHE, else HF_HOME/hub, as huggingface_hub resolved them."""
    from huggingface_hub import constants  # a dependency of transformers

    return constants.HF_HUB_CACHE


def _from_hf_cache(enc: _Encoder) -> tuple[Path, Path] | None:
    """(config folder, tokenizer folder) of the first repo in the local Hugging Face cache that has both.

    Only looks at files already on disk (try_to_load_from_cache never goes to the network).
    """
    from huggingface_hub import try_to_load_from_cache

    cache_dir = _hf_cache_dir()
    for repo, config_sub, tokenizer_sub in enc.cache:
        config, tokenizer = (
            try_to_load_from_cache(repo, f"{sub}/{name}" if sub else name, cache_dir=cache_dir)
            for sub, name in ((config_sub, "config.json"), (tokenizer_sub, "tokenizer_config.json"))
        )
        # each is a path, or None, or the "cached as missing" marker
        if isinstance(config, str) and isinstance(tokenizer, str):
            return Path(config).parent, Path(tokenizer).parent
    return None


def _missing_config_message(path: Path, enc: _Encoder) -> str:
    repo, config_sub, tokenizer_sub = enc.cache[0]
    return (
        f"{path}: a single-file {enc.what} needs {enc.flag} DIR (a folder with config.json and the tokenizer, "
        f"such as {enc.example}) or {repo}'s {config_sub}/config.json and {tokenizer_sub}/ in the Hugging Face "
        f"cache ({_hf_cache_dir()}); found neither"
    )


def _load_pretrained(loader: Any, path: Path, folder: Path | None, enc: _Encoder, dtype: torch.dtype):
    """A transformers folder, or a single weights file (ComfyUI's) with its config and tokenizer from
    ``folder`` or, without one, the local Hugging Face cache. Returns the model and its tokenizer folder."""
    if not path.exists():
        raise CheckpointError(f"{enc.what} not found: {path}")
    try:
        if path.is_dir():
            return loader.from_pretrained(path, local_files_only=True, **_dtype_kwarg(dtype)), folder or path
        dirs = (folder, folder) if folder is not None else _from_hf_cache(enc)
        if dirs is None:
            raise CheckpointError(_missing_config_message(path, enc))
        return _load_single_file(loader, path, dirs[0], dtype), dirs[1]
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{path}: cannot load the {enc.what} ({' '.join(str(e).split())[:200]})"
        ) from None


def _load_single_file(loader: Any, path: Path, config_dir: Path, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from .checkpoint import read_state_dict

    config = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    # A LLaVA (xtuner's) or full CLIP (openai's) config nests the text model's config.
    if getattr(config, "text_config", None) is not None:
        config = config.text_config
    with init_empty_weights():  # parameters on meta; buffers (rotary freqs, position ids) stay real
        model = loader.from_config(config) if hasattr(loader, "from_config") else loader(config)
    expected = model.state_dict().keys()
    sd = read_state_dict(path)
    # ComfyUI stores the causal LM ("model.layers...", "lm_head"); the encoder is the base model.
    for prefix in ("", "model.", "language_model.model.", "text_model."):
        renamed = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        if expected <= renamed.keys():
            sd = {k: renamed[k].to(dtype) for k in expected}
            break
    else:
        missing = sorted(expected - sd.keys())
        raise CheckpointError(
            f"{path}: {len(missing)} keys missing for {type(model).__name__}, first {missing[0]!r}"
        )
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def _load_tokenizer(folder: Path, what: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{folder}: no usable tokenizer for the {what} ({' '.join(str(e).split())[:200]})"
        ) from None


class HunyuanTextEncoders:
    def __init__(
        self,
        llm_path: str | Path,
        clip_path: str | Path,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        llm_tokenizer: str | Path | None = None,
        clip_tokenizer: str | Path | None = None,
        fp8_llm: bool = False,
    ) -> None:
        from transformers import AutoModel, CLIPTextModel

        llm_cfg = Path(llm_tokenizer) if llm_tokenizer else None
        clip_cfg = Path(clip_tokenizer) if clip_tokenizer else None
        self.device = torch.device(device)
        self.llm, llm_tok = _load_pretrained(AutoModel, Path(llm_path), llm_cfg, _LLM, dtype)
        if fp8_llm:  # --fp8_llm: its Linear weights stored in float8, computed in `dtype`
            from .fp8 import quantize_every_linear

            logger.info("LLM: %d Linear weights in float8_e4m3fn", quantize_every_linear(self.llm))
        self.clip, clip_tok = _load_pretrained(CLIPTextModel, Path(clip_path), clip_cfg, _CLIP, dtype)
        self.llm.to(self.device).eval().requires_grad_(False)
        self.clip.to(self.device).eval().requires_grad_(False)
        self.llm_tokenizer = _load_tokenizer(llm_tok, "LLM")
        self.clip_tokenizer = _load_tokenizer(clip_tok, "CLIP encoder")
        self.crop_start = self._template_length()

    def _template_length(self) -> int:
        """Tokens before the prompt (95 with the real Llama-3 tokenizer); counted, not hard-coded."""
        prefix = VIDEO_PROMPT_TEMPLATE.split("{}")[0]
        return len(self.llm_tokenizer(prefix)["input_ids"])

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        llm_in = self.llm_tokenizer(
            [VIDEO_PROMPT_TEMPLATE.format(p) for p in prompts],
            max_length=LLM_MAX_TOKENS + self.crop_start,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        out = self.llm(**llm_in, output_hidden_states=True)
        states = out.hidden_states[-(HIDDEN_STATE_SKIP_LAYER + 1)][:, self.crop_start :]
        mask = llm_in["attention_mask"][:, self.crop_start :].bool()
        clip_in = self.clip_tokenizer(
            prompts, max_length=CLIP_MAX_TOKENS, padding="max_length", truncation=True, return_tensors="pt"
        ).to(self.device)
        pooled = self.clip(**clip_in).pooler_output
        return TextEmbeddings(llm=states, llm_mask=mask, clip_pooled=pooled)
