"""The tiny text encoders load from every form users have and encode with the real code paths (the VAE:
test_vae.py)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hunyuan_model.errors import CheckpointError
from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_tiny_llm(out / "text_encoder")
    write_tiny_clip(out / "text_encoder_2")
    return out


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


@pytest.fixture(scope="module")
def single_files(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """ComfyUI-style single files of the tiny encoders: weights only, no config, no tokenizer."""
    from transformers import AutoModel, CLIPTextModel

    out = tmp_path_factory.mktemp("single")
    llm = AutoModel.from_pretrained(tiny_dir / "text_encoder")
    clip = CLIPTextModel.from_pretrained(tiny_dir / "text_encoder_2")
    llm_file, clip_file = out / "llava_llama3_fp16.safetensors", out / "clip_l.safetensors"
    # ComfyUI stores the causal LM: "model." prefix
    save_file({f"model.{k}": v.contiguous() for k, v in llm.state_dict().items()}, str(llm_file))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    return llm_file, clip_file


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own, offline: huggingface_hub reads its environment at
    import, so its constants are patched as well as the variables."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub does: blobs named by hash, snapshots/<commit>/ linking to them,
    refs/main naming the commit."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    (root / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * name.count("/") + "../../blobs") / blob.name)


def tokenizer_files(folder: Path, sub: str) -> dict[str, Path]:
    prefix = f"{sub}/" if sub else ""
    return {
        prefix + f.name: f for f in folder.iterdir() if f.name.startswith(("tokenizer", "special_tokens"))
    }


def test_text_encoders_from_single_files(tiny_dir, single_files, hf_cache):
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    llm_file, clip_file = single_files
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


def test_single_files_take_config_and_tokenizer_from_the_hf_cache(tiny_dir, single_files, hf_cache):
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    llm_dir, clip_dir = tiny_dir / "text_encoder", tiny_dir / "text_encoder_2"
    # diffusers' HunyuanVideo repo: configs and tokenizers only, the weights come from the single files
    files = {"text_encoder/config.json": llm_dir / "config.json"}
    files |= {"text_encoder_2/config.json": clip_dir / "config.json"}
    files |= tokenizer_files(llm_dir, "tokenizer") | tokenizer_files(clip_dir, "tokenizer_2")
    put_in_cache(hf_cache, "hunyuanvideo-community/HunyuanVideo", files)

    folders = HunyuanTextEncoders(llm_dir, clip_dir)
    cached = HunyuanTextEncoders(*single_files)
    assert cached.crop_start == folders.crop_start
    prompts = ["a green square", "a cat walks through a sunny garden"]
    a, b = folders.encode(prompts), cached.encode(prompts)
    assert torch.equal(a.llm, b.llm) and torch.equal(a.llm_mask, b.llm_mask)
    assert torch.equal(a.clip_pooled, b.clip_pooled)


def test_single_files_fall_back_to_the_llava_and_openai_clip_repos(
    tiny_dir, single_files, hf_cache, tmp_path
):
    """xtuner's LLaVA and openai's CLIP keep config and tokenizer at the root, the text config nested."""
    from transformers import AutoConfig, CLIPConfig, CLIPVisionConfig, LlavaConfig

    from hunyuan_model.text_encoders import HunyuanTextEncoders

    llm_dir, clip_dir = tiny_dir / "text_encoder", tiny_dir / "text_encoder_2"
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    ).to_dict()
    llava = LlavaConfig(text_config=AutoConfig.from_pretrained(llm_dir).to_dict(), vision_config=vision)
    llava.save_pretrained(tmp_path / "llava")
    full_clip = CLIPConfig(
        text_config=AutoConfig.from_pretrained(clip_dir).to_dict(), vision_config=vision, projection_dim=32
    )
    full_clip.save_pretrained(tmp_path / "clip")
    # the HunyuanVideo repo is there too, but without the tokenizers: it is skipped
    put_in_cache(
        hf_cache,
        "hunyuanvideo-community/HunyuanVideo",
        {
            "text_encoder/config.json": llm_dir / "config.json",
            "text_encoder_2/config.json": clip_dir / "config.json",
        },
    )
    put_in_cache(
        hf_cache,
        "xtuner/llava-llama-3-8b-v1_1-transformers",
        {"config.json": tmp_path / "llava" / "config.json"} | tokenizer_files(llm_dir, ""),
    )
    put_in_cache(
        hf_cache,
        "openai/clip-vit-large-patch14",
        {"config.json": tmp_path / "clip" / "config.json"} | tokenizer_files(clip_dir, ""),
    )

    folders = HunyuanTextEncoders(llm_dir, clip_dir)
    cached = HunyuanTextEncoders(*single_files)
    assert type(cached.llm) is type(folders.llm) and type(cached.clip) is type(folders.clip)
    a, b = folders.encode(["a red ball"]), cached.encode(["a red ball"])
    assert torch.equal(a.llm, b.llm) and torch.equal(a.clip_pooled, b.clip_pooled)


def test_single_files_without_config_anywhere_say_what_to_pass(tiny_dir, single_files, hf_cache):
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    llm_file, clip_file = single_files
    for kwargs, file, flag, sub in (
        ({"clip_tokenizer": tiny_dir / "text_encoder_2"}, llm_file, "--tokenizer1", "text_encoder"),
        ({"llm_tokenizer": tiny_dir / "text_encoder"}, clip_file, "--tokenizer2", "text_encoder_2"),
    ):
        with pytest.raises(CheckpointError) as e:
            HunyuanTextEncoders(llm_file, clip_file, **kwargs)
        message = str(e.value)
        assert "\n" not in message
        assert message.startswith(f"{file}: a single-file ")
        assert f"needs {flag} DIR" in message
        assert f"hunyuanvideo-community/HunyuanVideo's {sub}/config.json" in message
        assert str(hf_cache) in message
