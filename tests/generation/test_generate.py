"""hv_generate_video.py end to end on the tiny models: an mp4, deterministic per seed, LoRAs on the fly ==
merged, and bad input as one line with exit code 2 before anything is loaded or written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from generate_testing import generate_argv, write_models
from safetensors.torch import load_file, save_file

import hv_generate_video
from hv_common.video_io import read_frames


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("generate"))


_argv = generate_argv


def _latent(out: Path, name: str) -> torch.Tensor:
    return load_file(out / f"{name}_latent.safetensors")["latent"]


def test_generation_writes_an_mp4_and_is_deterministic_per_seed(models, tmp_path):
    lora = ["--lora_weight", str(models["lora"]), "--lora_multiplier", "0.8"]
    runs = {
        "a": ["--seed", "7", "--output_type", "both", *lora],
        "a_again": ["--seed", "7", "--output_type", "both", *lora],
        "merged": ["--seed", "7", "--output_type", "latent", "--lora_merge", *lora],
        "other_seed": ["--seed", "8", "--output_type", "latent", *lora],
        "no_lora": ["--seed", "7", "--output_type", "latent"],
        "swap": ["--seed", "7", "--output_type", "latent", "--blocks_to_swap", "2", *lora],  # a CPU: a note
    }
    for name, extra in runs.items():
        assert hv_generate_video.main(_argv(models, tmp_path, "--output_name", name, *extra)) == 0
    frames = read_frames(tmp_path / "a.mp4")
    assert frames.shape == (5, 32, 48, 3)
    assert _latent(tmp_path, "a").shape == (16, 2, 4, 6)  # musubi-tuner's: one video, no batch axis
    assert torch.equal(_latent(tmp_path, "a"), _latent(tmp_path, "a_again"))
    assert (frames == read_frames(tmp_path / "a_again.mp4")).all()
    assert (_latent(tmp_path, "a") - _latent(tmp_path, "merged")).abs().max() <= 1e-4
    assert torch.equal(_latent(tmp_path, "a"), _latent(tmp_path, "swap"))
    assert (_latent(tmp_path, "a") - _latent(tmp_path, "other_seed")).abs().max() > 0.1
    assert (_latent(tmp_path, "a") - _latent(tmp_path, "no_lora")).abs().max() > 1e-3  # the LoRA was used
    assert not (tmp_path / "merged.mp4").exists()  # latent only


def test_several_loras_each_with_its_multiplier(models, tmp_path):
    """Two files of different layouts at 0.5 each == the one file at 1.0 (the same update, split)."""
    import convert_lora

    other = tmp_path / "other.safetensors"
    assert (
        convert_lora.main(["--input", str(models["lora"]), "--output", str(other), "--target", "other"]) == 0
    )
    both = ["--lora_weight", str(models["lora"]), str(other), "--lora_multiplier", "0.5", "0.5"]
    one = ["--lora_weight", str(models["lora"])]
    for name, extra in (("both", both), ("one", one)):
        argv = _argv(
            models, tmp_path, "--seed", "3", "--output_type", "latent", "--output_name", name, *extra
        )
        assert hv_generate_video.main(argv) == 0
    assert (_latent(tmp_path, "both") - _latent(tmp_path, "one")).abs().max() <= 1e-4


def _bad_lora(path: Path) -> Path:
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 3072),
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(3072, 4),
        },
        path,
    )
    return path


def _foreign_lora(path: Path) -> Path:
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)}, path)
    return path


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--fp8", "--lora_merge"], "--lora_merge needs a DiT in --dit_dtype"),
        (["--dit_dtype", "fp7"], "unknown dtype"),
        (["--attn_mode", "flash"], "--attn_mode flash"),
        (["--video_length", "4"], "must be 4k + 1"),
        (["--video_size", "30", "48"], "multiple of 16"),
        (["--lora_weight", "{tmp}/missing.safetensors"], "LoRA file not found"),
        (["--lora_weight", "{bad}"], "3072 x 3072 in the LoRA but 64 x 64"),
        (["--lora_weight", "{foreign}"], "unknown LoRA layout"),
        (["--lora_weight", "{lora}", "--lora_multiplier", "1", "1"], "2 values for 1 --lora_weight"),
        (["--blocks_to_swap", "-1"], "--blocks_to_swap -1: expected 0 or more"),
        (["--blocks_to_swap", "99"], "allowed 0 to 2"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(models, tmp_path, capsys, extra, expected):
    names = {
        "tmp": tmp_path,
        "bad": _bad_lora(tmp_path / "bad.safetensors"),
        "foreign": _foreign_lora(tmp_path / "foreign.safetensors"),
        "lora": models["lora"],
    }
    out = tmp_path / "out"
    extra = [e.format(**names) for e in extra]
    assert hv_generate_video.main(_argv(models, out, "--seed", "1", *extra)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not out.exists()


def test_split_uncond_runs_cfg_as_two_calls_of_one_with_the_same_result(models, tmp_path, monkeypatch):
    from hunyuan_model.model import HYVideoDiffusionTransformer

    batches: list[int] = []
    forward = HYVideoDiffusionTransformer.forward

    def counted(self, x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(HYVideoDiffusionTransformer, "forward", counted)
    calls = {}
    for name, extra in (("batched", []), ("split", ["--split_uncond"])):
        batches.clear()
        argv = _argv(models, tmp_path, "--seed", "4", "--output_type", "latent", "--output_name", name)
        assert (
            hv_generate_video.main([*argv, "--guidance_scale", "3.0", "--negative_prompt", "dark", *extra])
            == 0
        )
        calls[name] = list(batches)
    assert calls == {"batched": [2, 2, 2], "split": [1] * 6}  # 3 steps
    assert (_latent(tmp_path, "batched") - _latent(tmp_path, "split")).abs().max() <= 1e-4
