"""hv_generate_video.py's outputs as musubi-tuner writes them: --output_type images (one PNG a frame, its
names), the latent file (musubi-tuner's tensor and header keys; none with --no_metadata), and --latent_path
(decode saved latents, no sampling: the same frames as decoding them right after sampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from generate_testing import generate_argv, write_models
from safetensors import safe_open
from safetensors.torch import save_file

import hv_generate_video
from hv_common.video_io import read_frames


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One tiny generation per output type (seed 7) and the latent file decoded twice."""
    root = tmp_path_factory.mktemp("outputs")
    models = write_models(root / "models")
    out = root / "out"
    for name, extra in {
        "both": ["--output_type", "both"],
        "images": ["--output_type", "images"],
        "bare": ["--output_type", "latent", "--no_metadata"],
    }.items():
        argv = generate_argv(
            models, out, "--seed", "7", "--output_name", name, "--negative_prompt", "dark", *extra
        )
        assert hv_generate_video.main(argv) == 0
    latent = str(out / "both_latent.safetensors")
    for output_type, name in (("video", []), ("images", ["--output_name", "decoded"])):
        argv = generate_argv(models, out, "--latent_path", latent, "--output_type", output_type, *name)
        assert hv_generate_video.main(argv) == 0
    return out


def test_images_are_one_png_a_frame_named_as_musubi_names_them(runs):
    folder = runs / "images"
    assert sorted(p.name for p in folder.iterdir()) == [f"images_{i:03d}.png" for i in range(5)]
    assert read_frames(folder / "images_000.png").shape == (1, 32, 48, 3)
    assert not (runs / "images.mp4").exists() and not (runs / "images_latent.safetensors").exists()


def test_the_latent_file_is_musubis_format_and_no_metadata_leaves_the_header_empty(runs):
    with safe_open(str(runs / "both_latent.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["latent"] and f.get_tensor("latent").shape == (16, 2, 4, 6)
        meta = f.metadata()
    assert (
        meta["seeds"] == "7" and meta["prompt"].startswith("a red ball") and meta["negative_prompt"] == "dark"
    )
    assert (meta["height"], meta["width"], meta["video_length"], meta["infer_steps"]) == (
        "32",
        "48",
        "5",
        "3",
    )
    assert {"guidance_scale", "embedded_cfg_scale"} <= meta.keys()
    with safe_open(str(runs / "bare_latent.safetensors"), framework="pt") as f:
        assert not f.metadata()
        assert torch.equal(
            f.get_tensor("latent"),
            safe_open(str(runs / "both_latent.safetensors"), "pt").get_tensor("latent"),
        )


def test_latent_path_decodes_the_saved_latents_to_the_same_frames(runs):
    (video,) = runs.glob("*_7_both_latent.mp4")  # <time>_<the header's seed>_<the latent file's name>
    assert np.array_equal(read_frames(video), read_frames(runs / "both.mp4"))
    decoded = runs / "decoded_both_latent"
    pngs = sorted(decoded.iterdir())
    assert [p.name for p in pngs] == [f"decoded_both_latent_{i:03d}.png" for i in range(5)]
    for mine, sampled in zip(pngs, sorted((runs / "images").iterdir()), strict=True):
        assert np.array_equal(read_frames(mine), read_frames(sampled))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--latent_path", "{missing}"], "no such file"),
        (["--latent_path", "{wrong}"], "expected (16, F, H, W)"),
        (["--latent_path", "{wrong}", "--output_type", "both"], "use --output_type video or images"),
    ],
)
def test_bad_latent_files_are_one_line_exit_2(tmp_path, capsys, extra, expected):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"latent": torch.zeros(4, 2, 4, 6)}, wrong)
    models = {k: tmp_path for k in ("dit", "vae", "te1", "te2")}  # not read: decoding needs the VAE only
    extra = [e.format(missing=tmp_path / "missing.safetensors", wrong=wrong) for e in extra]
    assert hv_generate_video.main(generate_argv(models, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_latent_path_says_which_sampling_options_it_does_not_use(runs, tmp_path, caplog):
    models = {k: runs.parent / "models" / v for k, v in (("dit", "tiny_dit.safetensors"), ("vae", "vae"))}
    models |= {
        "te1": runs.parent / "models" / "text_encoder",
        "te2": runs.parent / "models" / "text_encoder_2",
    }
    latent = str(runs / "bare_latent.safetensors")
    argv = generate_argv(
        models, tmp_path, "--latent_path", latent, "--lora_weight", str(runs / "none.safetensors")
    )
    assert hv_generate_video.main(argv) == 0
    assert "--latent_path decodes saved latents only: --lora_weight not used" in caplog.text
    assert (
        len(list(tmp_path.glob("*_0_bare_latent.mp4"))) == 1
    )  # no seed in a bare header: 0, as musubi-tuner
