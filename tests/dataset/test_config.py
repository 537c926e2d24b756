"""The dataset TOML: musubi-tuner's documented examples parse as they should; general settings, validation
datasets, relative paths, the demo's config (broken configs: test_config_errors.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from dataset_config_testing import write_config as _write

from dataset.config import (
    DatasetConfigError,
    ImageDatasetConfig,
    VideoDatasetConfig,
    load_dataset_config,
)
from dataset.demo import dataset_toml
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


def _place(text: str, root: Path) -> str:
    return text.replace("/path/to/", f"{root.as_posix()}/")


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
