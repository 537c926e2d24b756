"""The dataset TOML: musubi-tuner's documented examples parse as they should; every broken config is one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.config import (
    DatasetConfigError,
    ImageDatasetConfig,
    VideoDatasetConfig,
    load_dataset_config,
)
from dataset.demo import dataset_toml, write_clip
from dataset.items import list_captions, plan_items

ROOT = Path(__file__).resolve().parents[2]

# musubi-tuner's dataset_config.md, "Sample for Image Dataset with Caption Text Files" followed by
# "Sample for Video Dataset with Caption Text Files", verbatim but for the /path/to placeholders.
MUSUBI_SAMPLE = """\
# resolution, caption_extension, batch_size, num_repeats, enable_bucket, bucket_no_upscale should be set in either general or datasets
# otherwise, the default values will be used for each item

# general configurations
[general]
resolution = [960, 544]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = false

[[datasets]]
image_directory = "/path/to/image_dir"
cache_directory = "/path/to/cache_directory"
num_repeats = 1 # optional, default is 1. Number of times to repeat the dataset. Useful to balance the multiple datasets with different sizes.

# other datasets can be added here. each dataset can have different configurations

[[datasets]]
video_directory = "/path/to/video_dir"
cache_directory = "/path/to/cache_directory_video" # recommended to set cache directory
target_frames = [1, 25, 45]
frame_extraction = "head"
"""

# the "Specifications" section of the same document: every key, jsonl datasets included
MUSUBI_SPECIFICATION = """\
[general]
resolution = [960, 544] # optional, [W, H], default is None. This is the default resolution for all datasets
caption_extension = ".txt" # optional, default is None. This is the default caption extension for all datasets
batch_size = 1 # optional, default is 1. This is the default batch size for all datasets
num_repeats = 1 # optional, default is 1. Number of times to repeat the dataset.
enable_bucket = true # optional, default is false. Enable bucketing for datasets
bucket_no_upscale = false # optional, default is false. Disable upscaling for bucketing. Ignored if enable_bucket is false

[[datasets]]
image_directory = "/path/to/image_dir"
caption_extension = ".txt" # required for caption text files, if general caption extension is not set
resolution = [960, 544] # required if general resolution is not set
batch_size = 4 # optional, overwrite the default batch size
num_repeats = 1 # optional, overwrite the default num_repeats
enable_bucket = false # optional, overwrite the default bucketing setting
bucket_no_upscale = true # optional, overwrite the default bucketing setting
cache_directory = "/path/to/cache_directory" # optional, default is None to use the same directory as the image directory. NOTE: caching is always enabled

[[datasets]]
image_jsonl_file = "/path/to/metadata.jsonl" # includes pairs of image files and captions
resolution = [960, 544] # required if general resolution is not set
cache_directory = "/path/to/cache_directory_jsonl" # required for metadata jsonl file

[[datasets]]
video_directory = "/path/to/video_dir"
caption_extension = ".txt" # required for caption text files, if general caption extension is not set
resolution = [960, 544] # required if general resolution is not set

target_frames = [1, 25, 79] # required for video dataset. list of video lengths to extract frames. each element must be N*4+1 (N=0,1,2,...)

frame_extraction = "head" # optional, "head" or "chunk", "slide", "uniform". Default is "head"
frame_stride = 1 # optional, default is 1, available for "slide" frame extraction
frame_sample = 4 # optional, default is 1 (same as "head"), available for "uniform" frame extraction

[[datasets]]
video_jsonl_file = "/path/to/video_metadata.jsonl" # includes pairs of video files and captions

target_frames = [1, 79]

cache_directory = "/path/to/cache_directory_video_jsonl" # required for metadata jsonl file
"""


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """image_dir (2 images), video_dir (one 50-frame clip), metadata.jsonl files, each item captioned."""
    images, videos = tmp_path / "image_dir", tmp_path / "video_dir"
    images.mkdir()
    videos.mkdir()
    Image.new("RGB", (192, 108), (200, 30, 30)).save(images / "wide.png")
    Image.new("RGB", (100, 200), (30, 30, 200)).save(images / "tall.jpg")
    frames = [np.full((64, 112, 3), 4 * i, dtype=np.uint8) for i in range(50)]  # 1.75: the 960x544 bucket
    write_clip(videos / "clip.mp4", frames, 24)
    for path in [images / "wide.png", images / "tall.jpg", videos / "clip.mp4"]:
        path.with_suffix(".txt").write_text(f"a caption for {path.stem}\n", encoding="utf-8")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"image_path": str(images / "wide.png"), "caption": "from jsonl"}) + "\n", encoding="utf-8"
    )
    (tmp_path / "video_metadata.jsonl").write_text(
        json.dumps({"video_path": str(videos / "clip.mp4"), "caption": "a clip from jsonl"}) + "\n",
        encoding="utf-8",
    )
    return tmp_path


def _place(text: str, root: Path) -> str:
    return text.replace("/path/to/", f"{root.as_posix()}/")


def _write(root: Path, text: str, name: str = "dataset.toml") -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path


def test_musubi_sample_parses_to_the_expected_items(media):
    blueprint = load_dataset_config(_write(media, _place(MUSUBI_SAMPLE, media)))
    images, videos = blueprint.datasets
    assert images == ImageDatasetConfig(
        origin=images.origin,
        resolution=(960, 544),
        caption_extension=".txt",
        batch_size=1,
        num_repeats=1,
        enable_bucket=True,
        bucket_no_upscale=False,
        cache_directory=media / "cache_directory",
        image_directory=media / "image_dir",
    )
    assert videos == VideoDatasetConfig(
        origin=videos.origin,
        resolution=(960, 544),
        caption_extension=".txt",
        enable_bucket=True,
        cache_directory=media / "cache_directory_video",
        video_directory=media / "video_dir",
        target_frames=(1, 25, 45),
        frame_extraction="head",
    )
    assert (
        videos.frame_stride == 1 and videos.frame_sample == 1 and videos.max_frames == 129
    )  # musubi's defaults
    assert [(p.item_key, p.bucket_size) for p in plan_items(images)] == [
        ("tall", (512, 1008)),
        ("wide", (960, 544)),
    ]
    (clip,) = plan_items(videos)
    assert clip.latent_cache_names == [
        "clip_00000-001_0960x0544_hv.safetensors",
        "clip_00000-025_0960x0544_hv.safetensors",
        "clip_00000-045_0960x0544_hv.safetensors",
    ]
    assert [c.caption for c in list_captions(videos)] == ["a caption for clip"]


def test_musubi_specification_parses_every_key(media):
    blueprint = load_dataset_config(_write(media, _place(MUSUBI_SPECIFICATION, media)))
    image_dir, image_jsonl, video_dir, video_jsonl = blueprint.datasets
    assert (image_dir.batch_size, image_dir.enable_bucket, image_dir.bucket_no_upscale) == (4, False, True)
    assert image_jsonl.image_jsonl_file == media / "metadata.jsonl" and image_jsonl.enable_bucket
    assert [(c.item_key, c.caption) for c in list_captions(image_jsonl)] == [("wide", "from jsonl")]
    # a video dataset without cache_directory caches beside its videos, as in musubi-tuner
    assert video_dir.cache_directory == media / "video_dir"
    # the document's own 79 is not 4k+1: rounded down to 77 (with a warning), as the VAE needs
    assert (video_dir.target_frames, video_dir.frame_sample) == ((1, 25, 77), 4)
    assert video_jsonl.target_frames == (1, 77)
    assert [p.windows for p in plan_items(video_jsonl)] == [tuple(plan_items(video_dir))[0].windows[:1]]


def test_general_gives_defaults_and_a_dataset_overrides_them(media):
    text = f"""
[general]
resolution = 512
caption_extension = ".txt"
frame_extraction = "slide"
frame_stride = 8
[[datasets]]
video_directory = "{media.as_posix()}/video_dir"
target_frames = [9]
[[datasets]]
image_directory = "{media.as_posix()}/image_dir"
resolution = [256, 128]
"""
    video, image = load_dataset_config(_write(media, text)).datasets
    assert video.resolution == (512, 512) and (video.frame_extraction, video.frame_stride) == ("slide", 8)
    assert image.resolution == (256, 128) and image.caption_extension == ".txt"
    assert [w.start for w in tuple(plan_items(video))[0].windows] == [0, 8, 16, 24, 32, 40]


def test_validation_datasets_take_the_same_keys(media):
    text = (
        _place(MUSUBI_SAMPLE, media)
        + f"""
[[validation_datasets]]
video_directory = "{media.as_posix()}/video_dir"
cache_directory = "{media.as_posix()}/cache_validation"
target_frames = [25]
"""
    )
    blueprint = load_dataset_config(_write(media, text))
    (validation,) = blueprint.validation_datasets
    assert validation.target_frames == (25,) and validation.origin.where() == "validation_datasets[0]"
    assert len(blueprint.all_datasets) == 3


def test_target_frames_round_down_to_4k_plus_1_with_a_warning(media, caplog):
    text = f'[[datasets]]\nvideo_directory = "{media.as_posix()}/video_dir"\ncaption_extension = ".txt"\n'
    text += "target_frames = [1, 24, 25, 30]\n"
    with caplog.at_level(logging.WARNING):
        (video,) = load_dataset_config(_write(media, text)).datasets
    assert video.target_frames == (1, 21, 25, 29)
    assert "target_frames" in caplog.text and "4k+1" in caplog.text


def test_relative_paths_resolve_against_the_current_directory(media, monkeypatch):
    configs = media / "configs"
    configs.mkdir()
    text = '[[datasets]]\nimage_directory = "image_dir"\ncache_directory = "cache/images"\ncaption_extension = ".txt"\n'
    path = _write(configs, text)
    monkeypatch.chdir(media)
    (images,) = load_dataset_config(path).datasets
    assert (
        images.image_directory == media / "image_dir" and images.cache_directory == media / "cache" / "images"
    )
    monkeypatch.chdir(configs)  # from elsewhere the same file points elsewhere: musubi-tuner's rule
    with pytest.raises(DatasetConfigError, match=str(configs / "image_dir")):
        load_dataset_config(path)
    (images,) = load_dataset_config(path, base_dir=media).datasets
    assert images.image_directory == media / "image_dir"


def test_shipped_tiny_dataset_config_is_what_the_demo_writes():
    assert (ROOT / "configs" / "tiny_dataset.toml").read_text(encoding="utf-8") == dataset_toml("demo")


def test_demo_config_loads(tmp_path):
    from dataset.demo import write_demo

    blueprint = load_dataset_config(write_demo(tmp_path / "demo"))
    assert [d.is_video for d in blueprint.datasets] == [False, True]
    assert sum(len(list_captions(d)) for d in blueprint.datasets) == 6


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
