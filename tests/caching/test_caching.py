"""The two cache commands on the demo dataset with the tiny models, and the training batches read back."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG as CONFIG
from conftest import _text_args

import cache_latents
import cache_text_encoder_outputs
from dataset.cache_files import CacheFileError, read_metadata
from dataset.train_dataset import CachedBatches, CachedDatasetSpec, discover_cached_items


@pytest.fixture(scope="module")
def workdir(cached_demo) -> Path:
    return cached_demo


def test_latent_files_have_the_bucket_shapes(workdir):
    videos = workdir / "demo/cache/videos"
    f = videos / "red_square_00000-017_0160x0096_hv.safetensors"
    meta = read_metadata(f)
    assert meta["item_key"] == "red_square" and meta["bucket"] == "160x96x17" and meta["start_frame"] == "0"
    assert (meta["architecture"], meta["width"], meta["height"], meta["frame_count"]) == (
        "hunyuan_video",
        "160",
        "96",
        "17",
    )
    from safetensors.torch import load_file

    latents = load_file(str(f))["latents_5x12x20_float32"]
    assert latents.shape == (16, 5, 96 // 8, 160 // 8)  # (C, (F - 1) / 4 + 1, H / 8, W / 8)
    assert latents.std() > 0.01
    # an image's name has its original size (192x112), its latents the bucket's (160x96 at 128x128 area)
    image = load_file(str(workdir / "demo/cache/images/sunset_0192x0112_hv.safetensors"))
    assert [(k, v.shape) for k, v in image.items()] == [("latents_1x12x20_float32", (16, 1, 12, 20))]


def test_text_files_hold_musubi_tuners_padded_states(workdir):
    from safetensors.torch import load_file

    from dataset.cache_files import load_text
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    caption = (workdir / "demo/data/videos/red_square.txt").read_text().strip()
    te = HunyuanTextEncoders(workdir / "models/text_encoder", workdir / "models/text_encoder_2")
    fresh = te.encode([caption])
    path = workdir / "demo/cache/videos/red_square_hv_te.safetensors"
    cached = load_file(str(path))
    assert sorted(cached) == ["clipL_float32", "llm_float32", "llm_mask"]
    assert cached["llm_float32"].shape == (256, 32) and cached["llm_mask"].dtype == torch.int64
    assert torch.equal(cached["llm_mask"].bool(), fresh.llm_mask[0])
    assert torch.allclose(cached["llm_float32"], fresh.llm[0]) and torch.allclose(
        cached["clipL_float32"], fresh.clip_pooled[0]
    )
    n = int(fresh.llm_mask[0].sum())
    read = load_text(path)  # the loader keeps the valid tokens and pads per batch
    assert read["llm"].shape == (n, 32) and torch.allclose(read["llm"], fresh.llm[0, :n])
    assert read_metadata(path)["caption1"] == caption


def test_batches_read_back(workdir):
    specs = [
        CachedDatasetSpec(workdir / "demo/cache/images", batch_size=2, num_repeats=2),
        CachedDatasetSpec(workdir / "demo/cache/videos", batch_size=2),
    ]
    batches = CachedBatches(specs, seed=1)
    # images: 3 buckets x 2 repeats -> 3 batches of 2; videos: 8 windows, each its own (size, length) bucket
    assert len(batches) == 3 + 8
    seen = 0
    for i in range(len(batches)):
        b = batches[i]
        n = b["latents"].shape[0]
        seen += n
        assert b["llm"].shape[:2] == b["llm_mask"].shape and b["llm"].shape[0] == n
        assert b["llm_mask"][:, 0].all() and b["clip_pooled"].shape == (n, 32)
        for row in range(n):  # padding only after the valid tokens
            valid = int(b["llm_mask"][row].sum())
            assert not b["llm_mask"][row, valid:].any() and (b["llm"][row, valid:] == 0).all()
    assert seen == 3 * 2 + 8
    order = [batches._plan[i][0].latent_path for i in range(len(batches))]
    assert order == [CachedBatches(specs, seed=1)._plan[i][0].latent_path for i in range(len(batches))]
    batches.set_epoch(1)
    assert order != [batches._plan[i][0].latent_path for i in range(len(batches))]


def test_skip_existing_keeps_current_files_and_rebuilds_torn_ones(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cache = workdir / "demo/cache/videos"
    files = sorted(cache.glob("*_hv.safetensors"))
    before = {f: f.stat().st_mtime_ns for f in files}
    torn = files[0]
    torn.write_bytes(torn.read_bytes()[:100])
    assert cache_latents.main(["--dataset_config", CONFIG, "--vae", "models/vae", "--skip_existing"]) == 0
    for f in files:
        if f == torn:
            assert read_metadata(f) is not None  # rebuilt
        else:
            assert f.stat().st_mtime_ns == before[f], f.name  # untouched
    text = sorted(cache.glob("*_hv_te.safetensors"))
    stamps = [t.stat().st_mtime_ns for t in text]
    assert cache_text_encoder_outputs.main(_text_args("--skip_existing")) == 0
    assert stamps == [t.stat().st_mtime_ns for t in text]


def test_corrupt_cache_file_is_named(workdir, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(workdir / "demo/cache/images", cache)
    victim = cache / "checker_hv_te.safetensors"
    victim.write_bytes(b"\x00" * 64)
    with pytest.raises(CacheFileError, match="corrupt cache file .*checker_hv_te.safetensors"):
        CachedBatches([CachedDatasetSpec(cache)])  # every header is checked before training starts
    with pytest.raises(CacheFileError, match="run cache_latents.py first"):
        discover_cached_items(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("toml_text", "fragment"),
    [
        ('[general]\nresolution = [64, 64]\ncaption_extention = ".txt"\n', "did you mean"),
        (
            '[[datasets]]\nimage_directory = "missing_dir"\ncaption_extension = ".txt"\nresolution = [64, 64]\n'
            'cache_directory = "c"\n',
            "missing_dir",
        ),
        ("[general\nresolution = 3\n", "line 1"),
    ],
)
def test_broken_config_is_one_line_exit_2(workdir, tmp_path, monkeypatch, capsys, toml_text, fragment):
    monkeypatch.chdir(workdir)
    bad = tmp_path / "bad.toml"
    bad.write_text(toml_text)
    for main, args in (
        (cache_latents.main, ["--vae", "models/vae"]),
        (cache_text_encoder_outputs.main, _text_args()[2:]),
    ):
        assert main(["--dataset_config", str(bad), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_killed_cache_run_leaves_no_torn_file(workdir, tmp_path):
    """Killed in the middle of caching: every cache file present is complete (temp files never match)."""
    import shutil

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copytree(workdir / "demo", run_dir / "demo", ignore=shutil.ignore_patterns("cache"))
    (run_dir / "models").symlink_to(workdir / "models")
    # Stopped inside the third cache file's write, by construction (never a race against the machine's speed).
    script = Path(__file__).resolve().parents[1] / "helpers" / "kill_in_cache_write.py"
    proc = subprocess.run(
        [sys.executable, str(script), "3", "--dataset_config", CONFIG, "--vae", "models/vae"],
        cwd=run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGXFSZ, f"not stopped in the third write: {proc.stderr[-2000:]}"
    cache = run_dir / "demo/cache"
    written = list(cache.rglob("*_hv.safetensors"))
    assert len(written) == 2, written
    assert list(cache.rglob(".*.tmp")), "the third write left no temporary: it was not stopped inside it"
    for f in written:
        assert read_metadata(f) is not None, f"torn file {f}"
