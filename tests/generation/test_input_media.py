"""Generation that starts from media: video-to-video (--video_path, --strength: musubi-tuner's steps and noise
level) and SkyReels V1 I2V (--image_path on a DiT of 32 input channels, --dit_in_channels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from generate_testing import generate_argv, write_i2v_dit, write_models
from safetensors import safe_open

import hv_generate_video
from hv_common.video_io import write_mp4, write_png


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    models = write_models(root)
    models["i2v"] = write_i2v_dit(root)
    rng = np.random.default_rng(0)
    models["video"] = write_mp4(rng.integers(0, 256, (6, 40, 60, 3), dtype=np.uint8), root / "input.mp4")
    for name in ("red", "blue"):  # noise: the tiny random VAE encodes flat colours alike
        models[name] = write_png(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), root / f"{name}.png")
    return models


def _generate(models, out: Path, name: str, *extra: str) -> torch.Tensor:
    argv = generate_argv(models, out, "--seed", "9", "--output_type", "latent", "--output_name", name, *extra)
    assert hv_generate_video.main(argv) == 0
    with safe_open(str(out / f"{name}_latent.safetensors"), framework="pt") as f:
        return f.get_tensor("latent")[None], f.metadata()["infer_steps"]


def test_strength_sets_how_much_of_the_input_video_is_denoised_again(models, tmp_path):
    from generation.input_media import encode, read_video

    video = ["--video_path", str(models["video"])]
    kept, steps_kept = _generate(models, tmp_path, "s0", *video, "--strength", "0")
    some, steps_some = _generate(models, tmp_path, "s067", *video, "--strength", "0.67")
    full, _ = _generate(models, tmp_path, "s1", *video, "--strength", "1")
    text_only, _ = _generate(models, tmp_path, "t2v")
    # strength 0: no step, the input's latents (the first 5 frames, fitted to 32 x 48, VAE-encoded with the seed)
    frames = read_video(str(models["video"]), 5, 32, 48)
    assert frames.shape == (1, 5, 32, 48, 3)
    assert torch.equal(kept, encode(str(models["vae"]), frames, 9, torch.float32, torch.device("cpu")))
    assert (steps_kept, steps_some) == ("0", "2")  # int(3 steps x strength), as musubi-tuner counts them
    assert torch.equal(full, text_only)  # strength 1: from pure noise, the input weighs nothing
    for a, b in ((kept, some), (some, full)):
        assert (a - b).abs().max() > 1e-3


def test_an_i2v_dit_takes_the_image_as_its_extra_channels(models, tmp_path, caplog):
    i2v = dict(models, dit=models["i2v"])
    red, _ = _generate(i2v, tmp_path, "red", "--image_path", str(models["red"]), "--dit_in_channels", "32")
    blue, _ = _generate(i2v, tmp_path, "blue", "--image_path", str(models["blue"]), "--strength", "0.5")
    assert "--strength 0.5: acts on --video_path only" in caplog.text  # said, not silently ignored
    assert red.shape == (1, 16, 2, 4, 6)
    assert (red - blue).abs().max() > 1e-3  # the image conditions the video


@pytest.mark.parametrize(
    ("dit", "extra", "expected"),
    [
        ("i2v", ["--image_path", "{red}", "--dit_in_channels", "16"], "has 32 input channels"),
        ("i2v", [], "give --image_path"),
        ("dit", ["--image_path", "{red}"], "needs a SkyReels V1 I2V DiT (32 input channels)"),
        ("dit", ["--video_path", "{video}", "--video_length", "9"], "6 frames; --video_length 9"),
        ("dit", ["--video_path", "{video}", "--strength", "1.5"], "--strength 1.5: expected 0 to 1"),
        ("dit", ["--image_path", "{tmp}/none.png"], "--image_path"),
    ],
)
def test_bad_media_input_is_one_line_exit_2(models, tmp_path, capsys, dit, extra, expected):
    chosen = dict(models, dit=models[dit])
    extra = [e.format(red=models["red"], video=models["video"], tmp=tmp_path) for e in extra]
    assert hv_generate_video.main(generate_argv(chosen, tmp_path / "out", "--seed", "1", *extra)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
