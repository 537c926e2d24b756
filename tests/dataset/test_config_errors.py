"""Broken dataset configs: every one is one line naming the file and the key (or the line), in the loader and
in the check command."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_config_testing import write_config as _write
from PIL import Image

from dataset.config import (
    DatasetConfigError,
    load_dataset_config,
)
from dataset.items import list_captions

# ---------------------------------------------------------------------------------------------------------
# Broken configs: one line, naming the file and the key (or the line).

IMAGES = '[[datasets]]\nimage_directory = "{root}/image_dir"\ncaption_extension = ".txt"\n'
VIDEOS = '[[datasets]]\nvideo_directory = "{root}/video_dir"\ncaption_extension = ".txt"\n'

BROKEN = {
    "misspelt key": (
        IMAGES + "batch_sise = 2\n",
        ["datasets[0].batch_sise", "unknown key", "did you mean 'batch_size'"],
    ),
    "misspelt general key": (
        "[general]\nenable_buckets = true\n" + IMAGES,
        ["general.enable_buckets", "'enable_bucket'"],
    ),
    "misspelt section": (
        "[[dataset]]\nimage_directory = 'x'\n",
        ["dataset: unknown top-level key", "'datasets'"],
    ),
    "key outside a table": ("resolution = [960, 544]\n" + IMAGES, ["resolution: put it under [general]"]),
    "single brackets": ('[datasets]\nimage_directory = "x"\n', ["datasets: write [[datasets]]"]),
    "no datasets": ("[general]\nbatch_size = 1\n", ["no [[datasets]]"]),
    "missing directory": (
        IMAGES.replace("/image_dir", "/nope"),
        ["datasets[0].image_directory", "directory not found", "/nope"],
    ),
    "file as directory": (
        IMAGES.replace("/image_dir", "/metadata.jsonl"),
        ["image_directory: not a directory"],
    ),
    "syntax error": (IMAGES + "batch_size = = 2\n", ["line 4", "TOML syntax error"]),
    "unclosed string": ('[general]\ncaption_extension = ".txt\n' + IMAGES, ["line 2", "TOML syntax error"]),
    "string for int": (
        IMAGES + 'batch_size = "4"\n',
        ["datasets[0].batch_size", "expected an integer >= 1, got a string '4'"],
    ),
    "int for bool": (IMAGES + "enable_bucket = 1\n", ["datasets[0].enable_bucket", "expected true or false"]),
    "bool for int": (IMAGES + "num_repeats = true\n", ["datasets[0].num_repeats", "expected an integer"]),
    "zero batch": (IMAGES + "batch_size = 0\n", ["datasets[0].batch_size", "got 0"]),
    "one-number resolution list": (
        IMAGES + "resolution = [960]\n",
        ["datasets[0].resolution", "[width, height]"],
    ),
    "tiny resolution": (IMAGES + "resolution = [8, 8]\n", ["datasets[0].resolution", "at least 16"]),
    "resolution not /16": (
        IMAGES + "resolution = [960, 540]\n",
        ["datasets[0].resolution", "multiples of 16"],
    ),
    "target_frames int": (VIDEOS + "target_frames = 25\n", ["datasets[0].target_frames", "list of integers"]),
    "target_frames zero": (VIDEOS + "target_frames = [0, 25]\n", ["datasets[0].target_frames", ">= 1"]),
    "bad mode": (
        VIDEOS + 'frame_extraction = "slid"\n',
        ["datasets[0].frame_extraction", "did you mean 'slide'"],
    ),
    "bad fps": (VIDEOS + "source_fps = -30\n", ["datasets[0].source_fps", "positive"]),
    "video key on images": (
        IMAGES + "target_frames = [1]\n",
        ["datasets[0].target_frames", "video datasets only"],
    ),
    "path in general": (
        '[general]\ncache_directory = "c"\n' + IMAGES,
        ["general.cache_directory", "[[datasets]]"],
    ),
    "both sources": (
        IMAGES + 'video_directory = "{root}/video_dir"\n',
        ["datasets[0]:", "both image_directory and video_directory"],
    ),
    "no source": ('[[datasets]]\ncaption_extension = ".txt"\n', ["datasets[0]:", "found none"]),
    "no caption extension": (
        '[[datasets]]\nimage_directory = "{root}/image_dir"\n',
        ["datasets[0].caption_extension", "required"],
    ),
    "jsonl without cache": (
        '[[datasets]]\nimage_jsonl_file = "{root}/metadata.jsonl"\n',
        ["datasets[0].cache_directory", "required"],
    ),
    "missing jsonl": (
        '[[datasets]]\nimage_jsonl_file = "{root}/no.jsonl"\ncache_directory = "c"\n',
        ["image_jsonl_file: file not found"],
    ),
    "shared cache": (
        IMAGES + 'cache_directory = "{root}/c"\n' + VIDEOS + 'cache_directory = "{root}/c"\n',
        ["datasets[1].cache_directory", "also the cache directory of datasets[0]"],
    ),
    "shared default cache": (IMAGES + IMAGES, ["datasets[1].cache_directory", "datasets[0]"]),
}


def _assert_one_line(error: DatasetConfigError, config: Path, fragments: list[str]) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{config}: ")
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_broken_config_is_one_line_naming_file_and_key(media, case):
    text, fragments = BROKEN[case]
    config = _write(media, text.replace("{root}", media.as_posix()))
    with pytest.raises(DatasetConfigError) as info:
        load_dataset_config(config)
    _assert_one_line(info.value, config, fragments)


def test_missing_caption_names_the_media_file(media):
    (media / "video_dir" / "clip.txt").unlink()
    config = _write(media, VIDEOS.replace("{root}", media.as_posix()))
    with pytest.raises(DatasetConfigError) as info:
        load_dataset_config(config)
    _assert_one_line(
        info.value, config, ["datasets[0].video_directory", "clip.mp4 has no caption", "clip.txt"]
    )


def test_several_missing_captions_are_counted(media):
    for name in ("wide.txt", "tall.txt"):
        (media / "image_dir" / name).unlink()
    config = _write(media, IMAGES.replace("{root}", media.as_posix()))
    with pytest.raises(
        DatasetConfigError, match=r"tall.jpg has no caption: .* \(and 1 more without a caption\)"
    ):
        load_dataset_config(config)


def test_empty_directory(media):
    (media / "empty").mkdir()
    config = _write(media, IMAGES.replace("{root}/image_dir", f"{media.as_posix()}/empty"))
    with pytest.raises(DatasetConfigError) as info:
        load_dataset_config(config)
    _assert_one_line(info.value, config, ["datasets[0].image_directory", "no images in", ".png"])


def test_same_stem_twice_is_refused(media):
    Image.new("RGB", (32, 32)).save(media / "image_dir" / "wide.jpg")
    config = _write(media, IMAGES.replace("{root}", media.as_posix()))
    with pytest.raises(DatasetConfigError, match="same name 'wide'"):
        load_dataset_config(config)


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        (['{"image_path": "%s", "caption": "ok"}', "{not json"], ["metadata.jsonl line 2", "invalid JSON"]),
        (['{"caption": "no path"}'], ["line 1", '"image_path" missing']),
        (['{"image_path": "%s", "caption": 3}'], ["line 1", '"caption" not a string']),
        (
            ["", '{"image_path": "/no/such.png", "caption": "x"}'],
            ["line 2", "image_path not found: /no/such.png"],
        ),
        (["[1, 2]"], ["line 1", "expected an object"]),
    ],
)
def test_jsonl_errors_name_the_line(media, lines, fragments):
    image = (media / "image_dir" / "wide.png").as_posix()
    (media / "metadata.jsonl").write_text(
        "\n".join(line.replace("%s", image) for line in lines), encoding="utf-8"
    )
    text = f'[[datasets]]\nimage_jsonl_file = "{media.as_posix()}/metadata.jsonl"\ncache_directory = "c"\n'
    config = _write(media, text)
    with pytest.raises(DatasetConfigError) as info:
        load_dataset_config(config)
    _assert_one_line(info.value, config, ["datasets[0].image_jsonl_file", *fragments])


def test_missing_config_file(tmp_path):
    with pytest.raises(DatasetConfigError, match="dataset config not found"):
        load_dataset_config(tmp_path / "nope.toml")


def test_check_media_false_skips_listing(media):
    (media / "video_dir" / "clip.txt").unlink()
    config = _write(media, VIDEOS.replace("{root}", media.as_posix()))
    (video,) = load_dataset_config(config, check_media=False).datasets  # settings only
    with pytest.raises(DatasetConfigError, match="no caption"):
        list_captions(video)


def test_check_command_exits_2_with_one_line(media, capsys):
    from dataset.check import main

    config = _write(media, IMAGES.replace("{root}", media.as_posix()) + "batch_sise = 1\n")
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "batch_sise" in err
    config = _write(media, IMAGES.replace("{root}", media.as_posix()))
    assert main([str(config)]) == 0
    assert "wide_0192x0108_hv.safetensors" in capsys.readouterr().out  # the original size, as musubi-tuner


def test_a_byte_order_mark_is_not_a_syntax_error(media):
    config = media / "bom.toml"
    config.write_bytes("\ufeff".encode() + IMAGES.replace("{root}", media.as_posix()).encode())
    (images,) = load_dataset_config(config).datasets
    assert images.image_directory == media / "image_dir"
