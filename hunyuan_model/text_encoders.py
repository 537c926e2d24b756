"""HunyuanVideo's two text encoders through transformers: the LLaVA-Llama-3 LLM and CLIP-L.

As the original code does: the LLM reads the prompt inside the video prompt template, its third-to-last hidden
layer is taken (hidden_state_skip_layer=2, no final norm), and the template's tokens are cropped off together
with the attention mask; CLIP-L gives its pooled output. transformers is imported only when needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

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


def _load_pretrained(
    loader: Any, path: Path, config_dir: Path | None, what: str, flag: str, dtype: torch.dtype
):
    """A transformers folder, or a single weights file (ComfyUI's) with its config (and tokenizer) folder."""
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        if path.is_dir():
            return loader.from_pretrained(path, local_files_only=True, **_dtype_kwarg(dtype))
        if config_dir is None:
            raise CheckpointError(
                f"{path}: a single-file {what} needs {flag} DIR, a folder holding its config.json and tokenizer"
            )
        return _load_single_file(loader, path, config_dir, dtype)
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot load the {what} ({' '.join(str(e).split())[:200]})") from None


def _load_single_file(loader: Any, path: Path, config_dir: Path, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from .checkpoint import read_state_dict

    config = AutoConfig.from_pretrained(config_dir, local_files_only=True)
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
    ) -> None:
        from transformers import AutoModel, CLIPTextModel

        llm_path, clip_path = Path(llm_path), Path(clip_path)
        llm_cfg = Path(llm_tokenizer) if llm_tokenizer else None
        clip_cfg = Path(clip_tokenizer) if clip_tokenizer else None
        self.device = torch.device(device)
        self.llm = _load_pretrained(AutoModel, llm_path, llm_cfg, "LLM text encoder", "--tokenizer1", dtype)
        self.clip = _load_pretrained(
            CLIPTextModel, clip_path, clip_cfg, "CLIP text encoder", "--tokenizer2", dtype
        )
        self.llm.to(self.device).eval().requires_grad_(False)
        self.clip.to(self.device).eval().requires_grad_(False)
        self.llm_tokenizer = _load_tokenizer(llm_cfg or llm_path, "LLM")
        self.clip_tokenizer = _load_tokenizer(clip_cfg or clip_path, "CLIP encoder")
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
