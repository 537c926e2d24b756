"""The tiny VAE and text encoders load from every form users have and encode with the real code paths."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hunyuan_model.errors import CheckpointError
from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_tiny_vae(out / "vae")
    write_tiny_llm(out / "text_encoder")
    write_tiny_clip(out / "text_encoder_2")
    return out


def test_vae_loads_from_folder_safetensors_and_pt(tiny_dir, tmp_path):
    from hunyuan_model.vae import encode_frames, load_vae

    folder = load_vae(tiny_dir / "vae")
    sd = {k: v.contiguous() for k, v in folder.state_dict().items()}
    single = tmp_path / "hunyuan_video_vae_bf16.safetensors"
    save_file(sd, str(single))
    original = tmp_path / "pytorch_model.pt"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in sd.items()}}, original)
    frames = torch.randint(0, 256, (1, 9, 32, 48, 3), dtype=torch.uint8)
    reference = encode_frames(folder, frames, [torch.Generator().manual_seed(0)])
    assert reference.shape == (1, 16, 3, 4, 6)  # 4x time (causal: 1 + 8/4), 8x space
    for path in (single, original):
        vae = load_vae(path)
        assert tuple(vae.config.block_out_channels) == tuple(folder.config.block_out_channels)
        again = encode_frames(vae, frames, [torch.Generator().manual_seed(0)])
        assert torch.equal(again, reference), path


def test_vae_rejects_other_files(tiny_dir, tmp_path):
    from hunyuan_model.vae import load_vae

    dit_like = tmp_path / "dit.safetensors"
    save_file({"img_in.proj.weight": torch.zeros(2, 2)}, str(dit_like))
    with pytest.raises(CheckpointError, match="not a HunyuanVideo VAE: 1 keys, first 'img_in.proj.weight'"):
        load_vae(dit_like)
    with pytest.raises(CheckpointError, match="VAE not found"):
        load_vae(tmp_path / "missing")


def test_text_encoders_crop_the_template_and_mask_padding(tiny_dir):
    from hunyuan_model.text_encoders import LLM_MAX_TOKENS, VIDEO_PROMPT_TEMPLATE, HunyuanTextEncoders

    te = HunyuanTextEncoders(tiny_dir / "text_encoder", tiny_dir / "text_encoder_2")
    prompts = ["a red ball", "a cat walks through a sunny garden, close-up, cinematic style"]
    out = te.encode(prompts)
    assert out.llm.shape == (2, LLM_MAX_TOKENS, 32)
    assert out.clip_pooled.shape == (2, 32)
    for i, prompt in enumerate(prompts):
        full = te.llm_tokenizer(VIDEO_PROMPT_TEMPLATE.format(prompt))["input_ids"]
        assert out.llm_mask[i].sum().item() == len(full) - te.crop_start  # prompt + <|eot_id|>
        assert out.llm_mask[i, : len(full) - te.crop_start].all()  # valid tokens first, then padding
    # The crop really removes the template: the first kept token is the prompt's first token.
    ids = te.llm_tokenizer(VIDEO_PROMPT_TEMPLATE.format("a red ball"))["input_ids"]
    assert te.llm_tokenizer.decode(ids[te.crop_start :]) == "a red ball<|eot_id|>"


def test_text_encoders_from_single_files(tiny_dir, tmp_path):
    from transformers import AutoModel, CLIPTextModel

    from hunyuan_model.text_encoders import HunyuanTextEncoders

    llm = AutoModel.from_pretrained(tiny_dir / "text_encoder")
    clip = CLIPTextModel.from_pretrained(tiny_dir / "text_encoder_2")
    llm_file, clip_file = tmp_path / "llava_llama3_fp16.safetensors", tmp_path / "clip_l.safetensors"
    # ComfyUI stores the causal LM: "model." prefix
    save_file({f"model.{k}": v.contiguous() for k, v in llm.state_dict().items()}, str(llm_file))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    folders = HunyuanTextEncoders(tiny_dir / "text_encoder", tiny_dir / "text_encoder_2")
    files = HunyuanTextEncoders(
        llm_file,
        clip_file,
        llm_tokenizer=tiny_dir / "text_encoder",
        clip_tokenizer=tiny_dir / "text_encoder_2",
    )
    a, b = folders.encode(["a green square"]), files.encode(["a green square"])
    assert torch.equal(a.llm, b.llm) and torch.equal(a.clip_pooled, b.clip_pooled)
    with pytest.raises(CheckpointError, match="needs --tokenizer1 DIR"):
        HunyuanTextEncoders(llm_file, clip_file, clip_tokenizer=tiny_dir / "text_encoder_2")
