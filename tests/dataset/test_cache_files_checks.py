"""Wrong data never trains silently: each cache file is checked against its name and its item's bucket when
a run starts (headers), its values when first read, and a non-finite step names the files of its batch."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import IMAGES_TOML
from musubi_writer import write_latent
from safetensors.torch import load_file, save_file

import hv_train_network
from dataset.cache_files import CacheFileError, read_metadata, write_latent_cache
from dataset.config import load_dataset_config
from dataset.train_dataset import CachedBatches, CachedDatasetSpec, discover_cached_items
from training import step
from training.nonfinite import NonFiniteGuard

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def images(cached_demo, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the demo's image cache and a dataset TOML for it; the current directory is the demo's."""
    monkeypatch.chdir(cached_demo)
    cache = tmp_path / "cache"
    shutil.copytree(cached_demo / "demo/cache/images", cache)
    toml = tmp_path / "images.toml"
    toml.write_text(IMAGES_TOML.format(cache=cache))
    return cache, toml


def _batches(toml: Path) -> CachedBatches:
    return CachedBatches(
        [CachedDatasetSpec.of(d) for d in load_dataset_config(toml, check_media=False).datasets]
    )


def _train(out: Path, toml: Path, *extra: str) -> int:
    argv = [
        "--config_file",
        str(ROOT / "configs/tiny_demo.toml"),
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        str(toml),
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        *extra,
    ]
    return hv_train_network.main(argv)


def _own_lines(err: str, marker: str, start: str) -> list[str]:
    """The stderr lines holding `marker`, each checked to begin with `start` (not glued to a progress bar)."""
    lines = [line for line in err.split("\n") if marker in line]
    assert lines and all(line.split("\r")[-1].startswith(start) for line in lines), lines
    return lines


def test_a_latent_file_copied_over_another_is_refused_at_start(images):
    cache, toml = images
    victim = cache / "stripes_0096x0160_hv.safetensors"
    shutil.copy(cache / "checker_0128x0128_hv.safetensors", victim)
    with pytest.raises(
        CacheFileError, match=rf"{victim} holds latents of 1x16x16 .* bucket \(\d+x\d+, 1 frames\)"
    ):
        _batches(toml)


def test_a_same_shape_copy_is_refused_by_its_metadata(images):
    cache, _ = images
    shutil.copy(cache / "checker_0128x0128_hv.safetensors", cache / "other_0128x0128_hv.safetensors")
    shutil.copy(cache / "checker_hv_te.safetensors", cache / "other_hv_te.safetensors")
    with pytest.raises(
        CacheFileError,
        match=r"other_0128x0128_hv.safetensors was made for another item: .*item_key "
        r"checker \(the name says other\)",
    ):
        discover_cached_items(cache)  # every file of the folder, musubi-tuner's way: the same check


def test_a_truncated_text_cache_is_named_at_start(images):
    cache, toml = images
    victim = cache / "checker_hv_te.safetensors"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CacheFileError, match=rf"corrupt cache file {victim}: truncated"):
        _batches(toml)


def test_a_nan_latent_file_is_named_on_first_read_on_a_line_of_its_own(
    images, tmp_path, capsys, restore_logging
):
    cache, toml = images
    victim = cache / "sunset_0192x0112_hv.safetensors"
    [(key, latents)] = load_file(str(victim)).items()
    save_file({key: torch.full_like(latents, math.nan)}, str(victim), metadata=read_metadata(victim))
    batches = _batches(toml)  # the header is fine
    with pytest.raises(CacheFileError, match=rf"{victim}: 3840 of the 3840 values of {key} are NaN"):
        for i in range(len(batches)):
            batches[i]
    assert _train(tmp_path / "out", toml, "--max_train_steps", "3") == 2
    [line] = _own_lines(capsys.readouterr().err, "error: ", "error: ")
    assert str(victim) in line and "NaN" in line


def test_a_nonfinite_step_names_the_cache_files_of_its_batch(
    images, tmp_path, monkeypatch, capsys, restore_logging
):
    cache, toml = images
    real, calls = step.flow_loss, [0]

    def flow_loss(*args):  # a cache file whose values overflow the model: here, the first batch's loss is NaN
        calls[0] += 1
        return real(*args) * (math.nan if calls[0] == 1 else 1.0)

    monkeypatch.setattr(step, "flow_loss", flow_loss)
    assert _train(tmp_path / "out", toml, "--max_train_steps", "2") == 0
    [line] = _own_lines(capsys.readouterr().err, "optimizer step skipped", "WARNING")
    files = line.split("its batch came from ")[1].split(", ")
    assert len(files) == 2 and all(Path(f).parent == cache for f in files), line
    assert files[0].endswith("_hv.safetensors") and files[1].endswith("_hv_te.safetensors")


def test_the_guard_names_only_the_skipped_steps_files():
    guard = NonFiniteGuard(limit=3)
    guard.note_files(["a_hv.safetensors", "a_hv_te.safetensors"])
    guard.record(False)
    assert guard.files_note() == "; its batch came from a_hv.safetensors, a_hv_te.safetensors"
    guard.note_files(None)  # a batch without paths (a test's hand-made batch)
    guard.record(True)
    assert guard.files_note() == ""
    guard.note_files([f"f{i}" for i in range(10)])
    guard.record(True)
    assert guard.files_note().endswith("f7 and 2 more")


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        raise CacheFileError("/data/x_hv.safetensors: 3 of the 8 values of latents_1x2x2_float32 are NaN")


def test_an_error_from_a_loader_worker_stays_one_line():
    loader = torch.utils.data.DataLoader(_Broken(), batch_size=None, num_workers=1)
    with pytest.raises(CacheFileError) as e:
        next(iter(loader))
    assert str(e.value) == "/data/x_hv.safetensors: 3 of the 8 values of latents_1x2x2_float32 are NaN"


def test_nonfinite_values_are_never_written(tmp_path):
    target = tmp_path / "x_0064x0064_hv.safetensors"
    latents = torch.zeros(16, 1, 8, 8)
    latents[0, 0, 0, 0] = math.inf
    with pytest.raises(CacheFileError, match="non-finite values .*nothing written"):
        write_latent_cache(target, latents, (64, 64), None, {}, what="x.png")
    assert not target.exists()
    write_latent(tmp_path, "x", (64, 64), torch.zeros(16, 1, 8, 8))  # musubi-tuner's file reads
    assert read_metadata(target)["architecture"] == "hunyuan_video"
