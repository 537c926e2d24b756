"""One cache folder for both tools: musubi-tuner's HunyuanVideo caches train here, ours are what its reader
looks for, and files no item produces are removed (or kept with --keep_cache) and never trained."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, IMAGES_TOML, _text_args
from musubi_writer import batch_keys, latent_name, write_latent, write_text
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cache_latents
import cache_text_encoder_outputs
import hv_train_network
from dataset.cache_files import CacheFileError, load_latents, load_text, read_metadata
from dataset.config import load_dataset_config
from dataset.train_dataset import CachedBatches, CachedDatasetSpec, discover_cached_items

ROOT = Path(__file__).resolve().parents[2]


def _train(out: Path, dataset_config: Path, *extra: str) -> int:
    argv = [
        "--config_file",
        str(ROOT / "configs/tiny_demo.toml"),
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        str(dataset_config),
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        *extra,
    ]
    return hv_train_network.main(argv)


def _as_musubi(ours: Path, folder: Path, seed: int = 0) -> None:
    """Rewrite our cache folder with musubi-tuner's writer: the same latents and states, its padding garbage."""
    g = torch.Generator().manual_seed(seed)
    for latent in sorted(ours.glob("*_hv.safetensors")):
        meta = read_metadata(latent)
        window = (int(meta["start_frame"]), int(meta["frame_count"])) if "frame_count" in meta else None
        size = (int(meta["width"]), int(meta["height"]))
        path = write_latent(folder, meta["item_key"], size, load_latents(latent), window)
        assert path.name == latent.name  # the same names in both tools
    for text in sorted(ours.glob("*_hv_te.safetensors")):
        sd, meta = load_file(str(text)), read_metadata(text)
        mask = sd["llm_mask"]
        llm = torch.where(
            mask.bool()[:, None], sd["llm_float32"], torch.randn(sd["llm_float32"].shape, generator=g)
        )
        clip_mask = (torch.arange(77) < 9).long()
        write_text(
            folder,
            text.name.removesuffix("_hv_te.safetensors"),
            meta["caption1"],
            llm,
            mask,
            sd["clipL_float32"],
            clip_mask,
        )


def test_musubi_caches_train_with_our_first_step_loss(cached_demo, tmp_path, monkeypatch, restore_logging):
    monkeypatch.chdir(cached_demo)
    ours, theirs = cached_demo / "demo/cache/images", tmp_path / "musubi"
    _as_musubi(ours, theirs)
    assert sorted(p.name for p in theirs.iterdir()) == sorted(p.name for p in ours.iterdir())
    losses = {}
    for label, folder in (("ours", ours), ("musubi", theirs)):
        toml = tmp_path / f"{label}.toml"
        toml.write_text(IMAGES_TOML.format(cache=folder))
        out = tmp_path / label
        assert _train(out, toml, "--max_train_steps", "1", "--save_state") == 0
        state = torch.load(out / "tiny_lora-step00000001-state/train_state.pt", weights_only=True)
        losses[label] = state["extra"]["losses"][0]
    assert abs(losses["ours"] - losses["musubi"]) <= 1e-6, losses


def test_our_cache_folder_is_what_musubi_tuners_reader_looks_for(cached_demo):
    from dataset.media import image_size, probe_video

    video_set = load_dataset_config(
        cached_demo / DEMO_CONFIG, check_media=False, base_dir=cached_demo
    ).datasets[1]
    for kind in ("images", "videos"):
        folder = cached_demo / "demo/cache" / kind
        latents = sorted(folder.glob("*_hv.safetensors"))
        assert latents
        for latent in latents:
            tokens = latent.name.split("_")  # image_video_dataset.py prepare_for_training's parse
            width, height = map(int, tokens[-2].split("x"))
            key = "_".join(tokens[:-3] if kind == "videos" else tokens[:-2])
            if kind == "videos":  # the bucket: musubi-tuner resizes frames while decoding, names by that size
                start, frames = map(int, tokens[-3].split("-"))
                info = probe_video(cached_demo / "demo/data/videos" / f"{key}.mp4")
                bucket = video_set.bucket_selector().select(info.width, info.height)
                assert (width, height) == bucket and read_metadata(latent)[
                    "bucket"
                ] == f"{width}x{height}x{frames}"
            else:  # the original size, not the bucket
                frames = 1
                assert (width, height) == image_size(cached_demo / "demo/data/images" / f"{key}.png")
            text = folder / f"{key}_hv_te.safetensors"
            assert text.is_file(), text
            shapes = batch_keys(latent, text)
            assert sorted(shapes) == ["clipL", "latents", "llm", "llm_mask"], shapes
            c, f, h, w = shapes["latents"]
            assert c == 16 and f == (frames - 1) // 4 + 1 and shapes["llm"] == (256, 32)
            assert shapes["llm_mask"] == (256,) and shapes["clipL"] == (32,)
            for path in (latent, text):
                meta = read_metadata(path)
                assert (meta["architecture"], meta["format_version"]) == ("hunyuan_video", "1.0.1")
            meta = read_metadata(latent)
            assert (meta["width"], meta["height"]) == (str(width), str(height))
            assert meta.get("frame_count") == (str(frames) if kind == "videos" else None)
            with safe_open(str(text), "pt") as f:
                assert (
                    f.get_tensor("llm_mask").dtype == torch.int64
                )  # as the tokenizer's mask musubi-tuner stores


@pytest.mark.parametrize("version", ["1.0.0", "1.0.1"])
def test_every_musubi_format_version_and_dtype_reads(tmp_path, version):
    latent = torch.randn(16, 3, 4, 6).to(torch.bfloat16)
    lat = write_latent(tmp_path, "clip", (48, 32), latent, (0, 9), version)
    llm = torch.randn(256, 8, dtype=torch.float16)
    mask = (torch.arange(256) < 5).long()
    write_text(
        tmp_path,
        "clip",
        "a caption",
        llm,
        mask,
        torch.randn(12).half(),
        torch.ones(77, dtype=torch.long),
        version,
    )
    [item] = discover_cached_items(tmp_path)
    assert item.latent_path == lat and item.bucket == (16, 3, 4, 6)
    assert torch.equal(load_latents(lat), latent)
    text = load_text(item.text_path)
    assert torch.equal(text["llm"], llm[:5]) and text["clip_pooled"].shape == (12,)


def test_other_formats_are_named_not_called_corrupt(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    name = latent_name("x", (64, 64))
    save_file(
        {"latents": torch.zeros(16, 1, 8, 8)},
        str(folder / name),
        metadata={"format_version": "hv_latents_v1", "item_key": "x"},
    )
    with pytest.raises(CacheFileError, match=r"old hv_latents_v1 format.*rerun cache_latents.py") as e:
        discover_cached_items(folder)
    assert "corrupt" not in str(e.value)
    # a musubi-tuner Wan latent cache (save_latent_cache_wan's keys), renamed into the folder
    save_file(
        {"latents_1x8x8_float32": torch.zeros(16, 1, 8, 8), "clip_float32": torch.zeros(257, 1280)},
        str(folder / name),
        metadata={"architecture": "wan", "format_version": "1.0.1", "width": "64", "height": "64"},
    )
    with pytest.raises(CacheFileError, match=r"musubi-tuner Wan latent cache \(architecture 'wan'") as e:
        discover_cached_items(folder)
    assert "corrupt" not in str(e.value)
    write_latent(folder, "x", (64, 64), torch.zeros(16, 1, 8, 8))
    # a FramePack text-encoder cache where a HunyuanVideo one belongs
    save_file(
        {"llama_vec_float16": torch.zeros(512, 8).half(), "llama_attention_mask": torch.ones(512).long()},
        str(folder / "x_hv_te.safetensors"),
        metadata={"architecture": "framepack", "caption1": "c", "format_version": "1.0.1"},
    )
    with pytest.raises(CacheFileError, match="musubi-tuner FramePack text-encoder cache") as e:
        discover_cached_items(folder)
    assert "corrupt" not in str(e.value)
    save_file(
        {"llm": torch.zeros(3, 8), "clip_pooled": torch.zeros(8)},
        str(folder / "x_hv_te.safetensors"),
        metadata={"format_version": "hv_text_v1"},
    )
    with pytest.raises(CacheFileError, match="old hv_text_v1 format.*rerun cache_text_encoder_outputs.py"):
        discover_cached_items(folder)


def _copy_work(cached_demo: Path, run_dir: Path) -> Path:
    run_dir.mkdir()
    shutil.copytree(cached_demo / "demo", run_dir / "demo")
    (run_dir / "models").symlink_to(cached_demo / "models")
    return run_dir


def test_stale_files_are_removed_or_kept_and_never_trained(
    cached_demo, tmp_path, monkeypatch, caplog, restore_logging
):
    work = _copy_work(cached_demo, tmp_path / "run")
    monkeypatch.chdir(work)
    images, videos = work / "demo/cache/images", work / "demo/cache/videos"
    shutil.copy(
        videos / "red_square_00000-017_0160x0096_hv.safetensors",
        videos / "red_square_00000-025_0160x0096_hv.safetensors",
    )
    write_latent(images, "gone", (64, 64), torch.zeros(16, 1, 8, 8))  # a removed image's files
    shutil.copy(images / "checker_hv_te.safetensors", images / "gone_hv_te.safetensors")
    (images / "gone_0064x0064_wan.safetensors").write_bytes(b"another architecture's file")
    # checker's latents as musubi-tuner made them: current for --skip_existing (hours of GPU are not redone)
    checker = images / "checker_0128x0128_hv.safetensors"
    write_latent(images, "checker", (128, 128), load_latents(checker))
    stamp = checker.stat().st_mtime_ns
    stale = {
        videos / "red_square_00000-025_0160x0096_hv.safetensors",
        images / "gone_0064x0064_hv.safetensors",
    }

    latent_args = ["--dataset_config", DEMO_CONFIG, "--vae", "models/vae", "--skip_existing"]
    assert cache_latents.main([*latent_args, "--keep_cache"]) == 0
    assert all(p.exists() for p in stale) and checker.stat().st_mtime_ns == stamp

    blueprint = load_dataset_config(DEMO_CONFIG, check_media=False)
    caplog.set_level(logging.INFO, logger="dataset.cache_index")
    batches = CachedBatches([CachedDatasetSpec.of(d) for d in blueprint.datasets])
    assert len(batches) == 3 * 2 + 8  # exactly the TOML's items: 3 images x 2 repeats, 8 windows
    trained = {i.latent_path for group, _ in batches._groups for i in group}
    assert not trained & stale
    notes = [r.getMessage() for r in caplog.records if "not trained" in r.getMessage()]
    assert len(notes) == 2 and "2 cache file(s)" in notes[0] and "1 cache file(s)" in notes[1], notes

    assert cache_latents.main(latent_args) == 0
    assert not any(p.exists() for p in stale) and (images / "gone_hv_te.safetensors").exists()
    assert checker.stat().st_mtime_ns == stamp
    assert cache_text_encoder_outputs.main(_text_args("--skip_existing")) == 0
    assert not (images / "gone_hv_te.safetensors").exists()
    assert (images / "gone_0064x0064_wan.safetensors").exists()  # not this architecture's: untouched

    # target_frames [1, 9, 17] -> [1]: re-caching leaves only the 1-frame windows, and 3 video batches
    toml = Path(DEMO_CONFIG)
    toml.write_text(toml.read_text().replace("target_frames = [1, 9, 17]", "target_frames = [1]"))
    assert cache_latents.main(latent_args) == 0
    assert sorted(p.name for p in videos.glob("*_hv.safetensors")) == [
        "blue_ball_00000-001_0112x0144_hv.safetensors",
        "green_orbit_00000-001_0128x0128_hv.safetensors",
        "red_square_00000-001_0160x0096_hv.safetensors",
    ]
    video_set = load_dataset_config(DEMO_CONFIG, check_media=False).datasets[1]
    assert len(CachedBatches([CachedDatasetSpec.of(video_set)])) == 3


def test_the_text_reader_keeps_exactly_the_masked_tokens(tmp_path):
    llm = torch.randn(256, 8).to(torch.bfloat16)
    right = (torch.arange(256) < 7).long()
    write_text(tmp_path, "a", "c", llm, right, torch.randn(12), torch.ones(77, dtype=torch.long))
    assert torch.equal(load_text(tmp_path / "a_hv_te.safetensors")["llm"], llm[:7])  # the first rows only
    left = (torch.arange(256) >= 250).long()  # a left-padding tokenizer's mask: honoured too
    write_text(tmp_path, "b", "c", llm, left, torch.randn(12), torch.ones(77, dtype=torch.long))
    assert torch.equal(load_text(tmp_path / "b_hv_te.safetensors")["llm"], llm[250:])


def test_a_cache_folder_copied_without_its_media_trains_every_file_with_a_warning(
    cached_demo, tmp_path, monkeypatch, restore_logging, caplog
):
    """Caches made on one machine, trained on a rented GPU without the media: musubi-tuner's rule (every cache
    file of the folder), said once; a load that reads the media still names the missing folder."""
    monkeypatch.chdir(cached_demo)
    toml = tmp_path / "caches_only.toml"
    toml.write_text(
        IMAGES_TOML.replace("demo/data/images", str(tmp_path / "gone")).format(
            cache=cached_demo / "demo/cache/images"
        )
    )
    with pytest.raises(Exception, match="directory not found"):
        load_dataset_config(toml)
    caplog.set_level(logging.WARNING, logger="dataset.cache_index")
    blueprint = load_dataset_config(toml, check_media=False)
    batches = CachedBatches([CachedDatasetSpec.of(d) for d in blueprint.datasets])
    assert len(batches) == len(list((cached_demo / "demo/cache/images").glob("*_hv.safetensors")))
    assert [r for r in caplog.records if "media is not there" in r.getMessage()]
    assert _train(tmp_path / "out", toml, "--max_train_steps", "1") == 0
