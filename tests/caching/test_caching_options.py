"""The caching commands' musubi-tuner options and their effects: --vae_chunk_size, --vae_tiling /
--vae_spatial_tile_sample_min_size, --num_workers, --disable_cudnn_backend, --debug_mode (image, console,
video) with its --console_* options, --fp8_llm."""

import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import DEMO_CONFIG, IMAGES_TOML, _text_args
from safetensors.torch import load_file

import cache_latents
import cache_text_encoder_outputs
from caching.options import parse_latent_cache


def _images_config(workdir: Path, tmp_path: Path, name: str) -> tuple[str, Path]:
    """A dataset TOML of the demo's images alone, cached into tmp_path/name."""
    cache = tmp_path / name
    toml = tmp_path / f"{name}.toml"
    toml.write_text(IMAGES_TOML.format(cache=cache.as_posix()))
    return str(toml), cache


def _tensors(cache: Path, pattern: str) -> dict[str, dict[str, torch.Tensor]]:
    return {f.name: load_file(str(f)) for f in sorted(cache.glob(pattern))}


@pytest.fixture
def in_demo(cached_demo, monkeypatch) -> Path:
    monkeypatch.chdir(cached_demo)
    return cached_demo


def _spy_workers(monkeypatch) -> list[int]:
    """The thread counts caching.workers' pools are made with."""
    import caching.workers as workers

    made: list[int] = []
    pool = workers.ThreadPoolExecutor

    def counting(max_workers, **kwargs):
        made.append(max_workers)
        return pool(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(workers, "ThreadPoolExecutor", counting)
    return made


def test_vae_chunk_size_and_num_workers_cache_the_same_latents(in_demo, tmp_path, monkeypatch):
    import hunyuan_model.vae as vae_module

    plain_toml, plain = _images_config(in_demo, tmp_path, "plain")
    assert (
        cache_latents.main(["--dataset_config", plain_toml, "--vae", "models/vae", "--num_workers", "1"]) == 0
    )
    made = _spy_workers(monkeypatch)
    chunked: list[int] = []
    set_chunk = vae_module.set_vae_chunk_size
    monkeypatch.setattr(vae_module, "set_vae_chunk_size", lambda vae, n: chunked.append(set_chunk(vae, n)))
    toml, cache = _images_config(in_demo, tmp_path, "chunked")
    argv = ["--dataset_config", toml, "--vae", "models/vae", "--vae_chunk_size", "8", "--num_workers", "3"]
    assert cache_latents.main(argv) == 0
    assert made == [3] and chunked and chunked[0] > 20
    reference, again = _tensors(plain, "*_hv.safetensors"), _tensors(cache, "*_hv.safetensors")
    assert reference.keys() == again.keys() and reference
    for name, tensors in reference.items():
        for key, value in tensors.items():
            assert torch.allclose(again[name][key], value, atol=1e-5), name


@pytest.mark.parametrize(
    ("flags", "tile"),
    [
        ((), None),
        (("--vae_tiling",), 256),
        (("--vae_spatial_tile_sample_min_size", "128"), 128),  # musubi-tuner: giving the size enables tiling
        (("--vae_tiling", "--vae_spatial_tile_sample_min_size", "64"), 64),
    ],
)
def test_tiling_follows_musubi_tuner(in_demo, flags, tile):
    from caching.latents import _load_vae

    vae = _load_vae(parse_latent_cache(["--dataset_config", DEMO_CONFIG, "--vae", "models/vae", *flags]).vae)
    assert vae.use_tiling is (tile is not None)
    if tile is not None:
        assert (vae.tile_sample_min_height, vae.tile_sample_min_width) == (tile, tile)


def test_bad_values_are_one_line(capsys):
    for flags in (["--vae_chunk_size", "-1"], ["--num_workers", "0"], ["--debug_mode", "window"]):
        with pytest.raises(SystemExit) as info:
            cache_latents.main(["--dataset_config", "d.toml", "--vae", "v", *flags])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flags[0] in err[0], err
    assert cache_latents.main(["--dataset_config", "d.toml"]) == 2
    assert "--vae is needed" in capsys.readouterr().err
    assert cache_latents.main(["--dataset_config", "d.toml", "--vae", "v", "--console_num_images", "2"]) == 2
    assert capsys.readouterr().err == "error: --console_num_images: only with --debug_mode console\n"


def test_disable_cudnn_backend_turns_cudnn_off(in_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "enabled", True)  # restored after the test
    toml, _ = _images_config(in_demo, tmp_path, "cudnn")
    assert cache_latents.main(["--dataset_config", toml, "--debug_mode", "image"]) == 0
    assert torch.backends.cudnn.enabled
    assert (
        cache_latents.main(["--dataset_config", toml, "--debug_mode", "image", "--disable_cudnn_backend"])
        == 0
    )
    assert not torch.backends.cudnn.enabled


def test_debug_mode_image_saves_pngs_and_caches_nothing(in_demo, tmp_path, capsys):
    toml, cache = _images_config(in_demo, tmp_path, "image")
    assert cache_latents.main(["--dataset_config", toml, "--debug_mode", "image"]) == 0
    pngs = sorted((cache / "debug_images").glob("*.png"))
    assert len(pngs) == len(list(Path("demo/data/images").glob("*.png"))) > 0
    assert not list(cache.glob("*.safetensors"))
    assert f"are in {cache / 'debug_images'}" in capsys.readouterr().out


def test_debug_mode_video_writes_an_mp4_per_window(tmp_path, cached_demo, monkeypatch):
    import shutil

    shutil.copytree(cached_demo / "demo", tmp_path / "demo", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.chdir(tmp_path)
    assert cache_latents.main(["--dataset_config", DEMO_CONFIG, "--debug_mode", "video"]) == 0
    videos = {p.stem for p in (tmp_path / "demo/cache/videos").glob("*.mp4")}
    cached = {p.stem for p in (cached_demo / "demo/cache/videos").glob("*_hv.safetensors")}
    assert videos == cached and videos
    assert list((tmp_path / "demo/cache/images").glob("*.jpg"))
    assert not list((tmp_path / "demo/cache").rglob("*.safetensors"))


@pytest.fixture
def fake_ascii_magic(monkeypatch) -> list[tuple[tuple[int, ...], int, object]]:
    """ascii-magic stand-in (it is optional, as in musubi-tuner): records (image size, columns, back)."""
    import enum

    shown: list[tuple[tuple[int, ...], int, object]] = []
    module = types.ModuleType("ascii_magic")
    module.Back = enum.Enum("Back", {"BLACK": 40, "BLUE": 44})  # type: ignore[attr-defined]

    class Art:
        def __init__(self, image):
            self.size = image.size

        def to_terminal(self, columns, back):
            shown.append((self.size, columns, back))

    module.from_pillow_image = Art  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ascii_magic", module)
    return shown


def test_debug_mode_console_shows_text_art(in_demo, tmp_path, fake_ascii_magic, monkeypatch):
    toml, _ = _images_config(in_demo, tmp_path, "console")
    argv = ["--dataset_config", toml, "--debug_mode", "console", "--console_width", "40"]
    assert cache_latents.main([*argv, "--console_num_images", "2", "--console_back", "blue"]) == 0
    assert [(columns, back.name) for _, columns, back in fake_ascii_magic] == [(40, "BLUE")] * 2
    fake_ascii_magic.clear()
    answers = iter(["", "q"])  # interactive without --console_num_images: next, then quit
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert cache_latents.main(argv) == 0
    assert len(fake_ascii_magic) == 2


def test_debug_mode_console_errors_are_one_line(in_demo, tmp_path, fake_ascii_magic, monkeypatch, capsys):
    toml, _ = _images_config(in_demo, tmp_path, "console")
    assert (
        cache_latents.main(["--dataset_config", toml, "--debug_mode", "console", "--console_back", "x"]) == 2
    )
    assert capsys.readouterr().err.startswith("error: --console_back x: unknown; one of black, blue")
    monkeypatch.setitem(sys.modules, "ascii_magic", None)  # not installed
    assert cache_latents.main(["--dataset_config", toml, "--debug_mode", "console"]) == 2
    assert (
        capsys.readouterr().err == "error: --debug_mode console needs ascii-magic: pip install ascii-magic\n"
    )


def test_fp8_llm_and_num_workers_in_the_text_cache(in_demo, tmp_path, monkeypatch):
    toml, cache = _images_config(in_demo, tmp_path, "text")
    made = _spy_workers(monkeypatch)
    assert (
        cache_text_encoder_outputs.main([*_text_args("--num_workers", "2")[2:], "--dataset_config", toml])
        == 0
    )
    assert 2 in made
    reference = _tensors(cache, "*_te.safetensors")
    argv = [*_text_args("--fp8_llm", "--num_workers", "1")[2:], "--dataset_config", toml]
    assert cache_text_encoder_outputs.main(argv) == 0
    quantised = _tensors(cache, "*_te.safetensors")
    assert reference.keys() == quantised.keys() and reference
    for name, tensors in reference.items():
        llm = next(k for k in tensors if k.startswith("llm_") and "mask" not in k)
        a, b = tensors[llm].float(), quantised[name][llm].float()
        assert not torch.equal(a, b)  # the LLM ran with float8 weights
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.98
