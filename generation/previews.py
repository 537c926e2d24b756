"""Training previews: every `--sample_prompts` prompt sampled with the model as it is (LoRA applied).

The prompts are encoded once at start and the text encoders freed (the LLM alone is 8 B parameters);
sampling leaves the training run as it found it: modules' train/eval modes and torch's RNG states.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from generation.prompts import PromptDefaults, SamplePrompt, load_prompts
from hunyuan_model.sampler import sample_latents
from hunyuan_model.text_encoders import TextEmbeddings
from hv_common.labels import preview_stem
from hv_common.video_io import write_media

if TYPE_CHECKING:
    from diffusers.models import AutoencoderKLHunyuanVideo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPrompt:
    prompt: SamplePrompt
    embeddings: TextEmbeddings  # batch 1, on the CPU
    negative: TextEmbeddings | None  # set when the prompt uses CFG ("" when it gave no --n)


def _to_cpu(emb: TextEmbeddings) -> TextEmbeddings:
    return TextEmbeddings(llm=emb.llm.cpu(), llm_mask=emb.llm_mask.cpu(), clip_pooled=emb.clip_pooled.cpu())


def encode_prompts(
    prompts: Sequence[SamplePrompt],
    text_encoder1: str | Path,
    text_encoder2: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer1: str | Path | None = None,
    tokenizer2: str | Path | None = None,
    fp8_llm: bool = False,
) -> list[PreparedPrompt]:
    """Load both text encoders, encode each distinct text once, free the encoders."""
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    texts = {p.text for p in prompts} | {p.negative or "" for p in prompts if p.uses_cfg}
    encoders = HunyuanTextEncoders(
        text_encoder1,
        text_encoder2,
        dtype=dtype,
        device=device,
        llm_tokenizer=tokenizer1,
        clip_tokenizer=tokenizer2,
        fp8_llm=fp8_llm,
    )
    try:
        cache = {text: _to_cpu(encoders.encode([text])) for text in sorted(texts)}
    finally:
        del encoders
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return [
        PreparedPrompt(p, cache[p.text], cache[p.negative or ""] if p.uses_cfg else None) for p in prompts
    ]


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's CPU (and initialised CUDA) RNG states afterwards: previews never shift training."""
    cpu = torch.random.get_rng_state()
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """eval() for sampling, then every submodule's own flag back (a frozen base may have been in eval)."""
    modes = [(m, m.training) for root in modules if root is not None for m in root.modules()]
    for root in modules:
        if root is not None:
            root.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class PreviewSampler:
    """Built once at start (`from_files`); `sample` writes one video (or PNG) per prompt."""

    def __init__(self, prepared: Sequence[PreparedPrompt], output_name: str | None = None) -> None:
        self.prepared = list(prepared)
        self.output_name = output_name

    @classmethod
    def from_files(
        cls,
        prompts_file: str | Path,
        text_encoder1: str | Path,
        text_encoder2: str | Path,
        *,
        output_name: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer1: str | Path | None = None,
        tokenizer2: str | Path | None = None,
        defaults: PromptDefaults | None = None,
        fp8_llm: bool = False,
    ) -> PreviewSampler:
        prompts = load_prompts(prompts_file, defaults)  # a bad file fails before the encoders load
        prepared = encode_prompts(
            prompts,
            text_encoder1,
            text_encoder2,
            device=device,
            dtype=dtype,
            tokenizer1=tokenizer1,
            tokenizer2=tokenizer2,
            fp8_llm=fp8_llm,
        )
        return cls(prepared, output_name)

    def file_stem(self, label: str, prompt: SamplePrompt) -> str:
        return preview_stem(self.output_name, label, prompt.index, prompt.seed)

    def sample(
        self,
        model: nn.Module,
        vae: AutoencoderKLHunyuanVideo,
        label: str,
        out_dir: str | Path,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        network: nn.Module | None = None,
        progress: bool = True,
    ) -> list[Path]:
        """Sample every prompt into out_dir/sample/; label: hv_common.labels' step_label(100), epoch_label(2)
        or FINAL_LABEL, in the files' names. network: the LoRA network when it is not a submodule of the model
        (its dropout must be off too). Returns the files written."""
        from hunyuan_model.vae import decode_latents

        sample_dir = Path(out_dir) / "sample"
        vae_device = next(vae.parameters()).device
        written: list[Path] = []
        with preserved_rng(), eval_mode(model, network, vae):
            vae.to(device)  # type: ignore[arg-type]  # diffusers' decorator on ModelMixin.to hides its signature
            try:
                for i, item in enumerate(self.prepared):
                    logger.info("preview %d/%d: %s", i + 1, len(self.prepared), item.prompt.text)
                    latents = self._latents(model, item, device, dtype, progress)
                    frames = decode_latents(vae, latents)[0]
                    written.append(write_media(frames, sample_dir / self.file_stem(label, item.prompt)))
            finally:
                # the trainer may keep the VAE off the accelerator between previews (type: diffusers' decorator)
                vae.to(vae_device)  # type: ignore[arg-type]
        for path in written:
            logger.info("wrote %s", path)
        return written

    @staticmethod
    def _latents(
        model: nn.Module, item: PreparedPrompt, device: torch.device | str, dtype: torch.dtype, progress: bool
    ) -> torch.Tensor:
        p = item.prompt
        return sample_latents(
            model,
            item.embeddings,
            height=p.height,
            width=p.width,
            frames=p.frames,
            steps=p.steps,
            embedded_guidance_scale=p.guidance,
            flow_shift=p.flow_shift,
            seed=p.seed,
            device=device,
            dtype=dtype,
            cfg_scale=p.cfg_scale if p.uses_cfg else None,
            negative=item.negative,
            progress=progress,
        )
