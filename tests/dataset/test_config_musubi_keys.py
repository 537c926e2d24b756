"""musubi-tuner's dataset TOML as it is: other models' keys, .json configs, its video rules, each said aloud."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.config import DatasetConfigError, load_dataset_config
from dataset.demo import write_clip
from dataset.items import plan_items

IMAGES = '[[datasets]]\nimage_directory = "{root}/images"\ncaption_extension = ".txt"\n'
VIDEOS = '[[datasets]]\nvideo_directory = "{root}/videos"\ncaption_extension = ".txt"\n'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "videos").mkdir()
    Image.new("RGB", (192, 108), (200, 30, 30)).save(tmp_path / "images" / "wide.png")
    write_clip(
        tmp_path / "videos" / "clip.mp4", [np.full((48, 64, 3), 9 * i, dtype=np.uint8) for i in range(9)], 24
    )
    for path in (tmp_path / "images" / "wide.png", tmp_path / "videos" / "clip.mp4"):
        path.with_suffix(".txt").write_text("a caption", encoding="utf-8")
    return tmp_path


def _load(root: Path, text: str, name: str = "dataset.toml"):
    path = root / name
    path.write_text(text.replace("{root}", root.as_posix()), encoding="utf-8")
    return load_dataset_config(path)


OTHER_MODELS = [
    (IMAGES, 'control_directory = "{root}/images"'),
    (IMAGES, "multiple_target = false"),
    (IMAGES, "fp_latent_window_size = 9"),
    (IMAGES, "fp_1f_clean_indices = [0, 10]"),
    (IMAGES, "fp_1f_target_index = 1"),
    (IMAGES, "fp_1f_no_post = true"),
    (IMAGES, "no_resize_control = true"),
    (IMAGES, "control_resolution = [1024, 1024]"),
    (IMAGES, "flux_kontext_no_resize_control = true"),
    (IMAGES, "qwen_image_edit_no_resize_control = true"),
    (IMAGES, "qwen_image_edit_control_resolution = 1024"),
    (VIDEOS, 'control_directory = "{root}/videos"'),
    (VIDEOS, "fp_latent_window_size = 9"),
]


@pytest.mark.parametrize(
    ("table", "line"), OTHER_MODELS, ids=[line.split(" ")[0] + "/" + t[17:22] for t, line in OTHER_MODELS]
)
def test_other_models_keys_are_accepted_with_a_one_line_warning(root, caplog, table, line):
    plain = _load(root, table, "plain.toml").datasets[0]
    with caplog.at_level(logging.WARNING):
        (dataset,) = _load(root, table + line + "\n").datasets
    key = line.split(" ")[0]
    (warning,) = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert (
        "\n" not in warning and f"datasets[0].{key}" in warning and "does nothing for HunyuanVideo" in warning
    )
    assert [p.bucket_size for p in plan_items(dataset)] == [p.bucket_size for p in plan_items(plain)]


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            VIDEOS + "multiple_target = true\n",
            ["datasets[0].multiple_target", "not valid in a video dataset"],
        ),
        (
            IMAGES + 'fp_latent_window_size = "9"\n',
            ["datasets[0].fp_latent_window_size", "expected an integer"],
        ),
        (IMAGES + "fp_1f_clean_indices = 0\n", ["datasets[0].fp_1f_clean_indices", "list of integers"]),
        ("[general]\nfp_latent_window_size = 9\n" + IMAGES, ["general.fp_latent_window_size", "unknown key"]),
    ],
)
def test_other_models_keys_where_musubi_tuner_refuses_them_are_errors(root, text, fragments):
    with pytest.raises(DatasetConfigError) as info:
        _load(root, text)
    assert all(f in str(info.value) for f in fragments), str(info.value)


def test_a_json_dataset_config_reads_like_the_toml(root):
    doc = {
        "general": {"resolution": [128, 96], "caption_extension": ".txt", "enable_bucket": True},
        "datasets": [
            {"image_directory": f"{root}/images", "num_repeats": 2},
            {"video_directory": f"{root}/videos", "target_frames": [1, 5], "frame_extraction": "chunk"},
        ],
    }
    toml = (
        '[general]\nresolution = [128, 96]\ncaption_extension = ".txt"\nenable_bucket = true\n\n'
        f'[[datasets]]\nimage_directory = "{root}/images"\nnum_repeats = 2\n\n'
        f'[[datasets]]\nvideo_directory = "{root}/videos"\ntarget_frames = [1, 5]\nframe_extraction = "chunk"\n'
    )
    from_json = _load(root, json.dumps(doc), "dataset.json")
    from_toml = _load(root, toml, "dataset.toml")
    strip = [({**vars(d), "origin": None}) for d in from_json.datasets]
    assert strip == [({**vars(d), "origin": None}) for d in from_toml.datasets]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("{not json", "line 1: JSON syntax error"), ("[1, 2]", "expected a JSON object")],
)
def test_a_broken_json_config_is_one_line(root, text, fragment):
    with pytest.raises(DatasetConfigError, match=fragment):
        _load(root, text, "dataset.json")


def test_videos_are_bucketed_whatever_enable_bucket_says_with_a_warning(root, caplog):
    # musubi-tuner caches every video bucketed: a 64x48 clip at resolution 96x96 is 112x80, not cropped to 96x96
    with caplog.at_level(logging.WARNING):
        (video,) = _load(root, "[general]\nenable_bucket = false\nresolution = [96, 96]\n" + VIDEOS).datasets
    assert [p.bucket_size for p in plan_items(video)] == [(112, 80)]
    assert "videos are always bucketed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (video,) = _load(root, "[general]\nresolution = [64, 68]\n" + VIDEOS).datasets  # not /16: buckets
    assert "always bucketed" not in caplog.text  # the default (false) is not the user's choice: no warning


def test_musubi_tuners_video_rules_are_applied_and_said(root, caplog):
    with caplog.at_level(logging.WARNING):
        (video,) = _load(
            root, VIDEOS + 'target_frames = [9, 1, 6]\nframe_extraction = "uniform"\nframe_sample = 1\n'
        ).datasets
    assert video.target_frames == (1, 5, 9)  # rounded down to 4k+1, sorted
    assert video.frame_extraction == "head"  # one uniform sample is head, in musubi-tuner too
    assert "rounded down" in caplog.text and "'uniform' with frame_sample = 1 is 'head'" in caplog.text


def test_no_upscale_videos_batched_together_stop_where_musubi_tuner_would_batch_them_otherwise(root):
    text = "[general]\nenable_bucket = true\nbucket_no_upscale = true\nresolution = [128, 128]\n" + VIDEOS
    (video,) = _load(root, text + "batch_size = 2\n").datasets
    with pytest.raises(
        DatasetConfigError, match=r"bucket_no_upscale: .*clip.mp4 \(64x48\).*set bucket_no_upscale = false"
    ):
        list(plan_items(video))
    (video,) = _load(root, text + "batch_size = 1\n").datasets  # one per batch: the batches are the same
    assert [p.bucket_size for p in plan_items(video)] == [(144, 112)]


def test_files_musubi_tuners_glob_skips_are_skipped(root):
    # musubi-tuner globs "*.png", "*.PNG", ...: a mixed-case extension and a dot file are not images to it
    Image.new("RGB", (32, 32)).save(root / "images" / "odd.Png", format="PNG")
    Image.new("RGB", (32, 32)).save(root / "images" / "._wide.png", format="PNG")
    Image.new("RGB", (32, 32)).save(root / "images" / "LOUD.PNG", format="PNG")
    (root / "images" / "LOUD.txt").write_text("loud", encoding="utf-8")
    (images,) = _load(root, IMAGES).datasets
    assert sorted(p.item_key for p in plan_items(images)) == ["LOUD", "wide"]
