"""hv_generate_video.py --fp8_llm and --vae_chunk_size (generation/options.py EncoderMemoryOptions): the LLM
encodes the prompt with float8 Linear weights; the VAE decodes the same frames from width slices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hv_generate_video


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from hunyuan_model.tiny import write_tiny_dit
    from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae

    root = tmp_path_factory.mktemp("generate_memory")
    return {
        "dit": write_tiny_dit(root),
        "vae": write_tiny_vae(root / "vae"),
        "te1": write_tiny_llm(root / "text_encoder"),
        "te2": write_tiny_clip(root / "text_encoder_2"),
    }


def _run(models: dict[str, Path], out: Path, monkeypatch, *extra: str) -> dict[str, object]:
    """Generate once; what the text encoders and the VAE were and gave."""
    import hunyuan_model.text_encoders as text_encoders
    import hunyuan_model.vae as vae_module
    from hunyuan_model.fp8 import Fp8Linear

    seen: dict[str, object] = {}
    encoders_class = text_encoders.HunyuanTextEncoders
    decode = vae_module.decode_latents

    def encoders(*args, **kwargs):
        built = encoders_class(*args, **kwargs)
        seen["fp8_linears"] = sum(isinstance(m, Fp8Linear) for m in built.llm.modules())
        return built

    def decode_latents(vae, latents):
        seen["chunked_convs"] = sum(isinstance(m, vae_module.ChunkedConv3d) for m in vae.modules())
        seen["frames"] = frames = decode(vae, latents)
        return frames

    monkeypatch.setattr(text_encoders, "HunyuanTextEncoders", encoders)
    monkeypatch.setattr(vae_module, "decode_latents", decode_latents)
    argv = [
        *("--dit", str(models["dit"]), "--vae", str(models["vae"])),
        *("--text_encoder1", str(models["te1"]), "--text_encoder2", str(models["te2"])),
        *("--prompt", "a red ball rolls across a blue floor", "--video_size", "32", "64"),
        *("--video_length", "5", "--infer_steps", "2", "--seed", "3", "--save_path", str(out), *extra),
    ]
    assert hv_generate_video.main(argv) == 0
    monkeypatch.undo()
    return seen


def test_fp8_llm_and_vae_chunk_size_in_generation(models, tmp_path, monkeypatch):
    plain = _run(models, tmp_path / "plain", monkeypatch)
    assert plain["fp8_linears"] == 0 and plain["chunked_convs"] == 0
    chunked = _run(models, tmp_path / "chunked", monkeypatch, "--vae_chunk_size", "8")
    assert chunked["chunked_convs"] > 20
    frames, again = plain["frames"], chunked["frames"]
    assert isinstance(frames, torch.Tensor) and isinstance(again, torch.Tensor)
    assert (frames.int() - again.int()).abs().max() <= 1  # the same video
    fp8 = _run(models, tmp_path / "fp8", monkeypatch, "--fp8_llm")
    assert fp8["fp8_linears"] == 4 * 7  # every Linear of the tiny LLM's 4 layers (q k v o, gate up down)
    assert not torch.equal(fp8["frames"], frames)  # another prompt embedding, another video


def test_vae_chunk_size_bad_value_is_one_line(models, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        hv_generate_video.main(
            [
                "--dit",
                "d",
                "--text_encoder1",
                "a",
                "--text_encoder2",
                "b",
                "--prompt",
                "p",
                "--save_path",
                "o",
                "--vae_chunk_size",
                "x",
            ]
        )
    assert info.value.code == 2
    assert "--vae_chunk_size" in capsys.readouterr().err
