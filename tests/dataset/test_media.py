"""Media decoding and the item records the cache commands read: shapes, frame identity, determinism, names."""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset.items as items_module
from dataset.cache_names import latent_cache_name, parse_latent_cache_name, text_cache_name
from dataset.config import load_dataset_config
from dataset.demo import write_clip, write_demo
from dataset.errors import MediaError
from dataset.items import iter_items, list_captions, plan_items
from dataset.media import VideoInfo, fit_to_bucket, image_size, load_image, probe_video


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("demo") / "demo")


def _records(config: Path) -> list:
    return [r for d in load_dataset_config(config).datasets for r in iter_items(d)]


def test_demo_items_have_the_expected_shapes(demo):
    got = [(r.item_key, r.frames.shape, r.bucket, r.start_frame) for r in _records(demo)]
    assert got == [
        ("checker", (1, 128, 128, 3), (128, 128, 1), 0),
        ("stripes", (1, 160, 96, 3), (96, 160, 1), 0),
        ("sunset", (1, 96, 160, 3), (160, 96, 1), 0),  # 192x112 -> nearest aspect bucket
        ("blue_ball", (1, 144, 112, 3), (112, 144, 1), 0),
        ("blue_ball", (9, 144, 112, 3), (112, 144, 9), 0),
        ("blue_ball", (17, 144, 112, 3), (112, 144, 17), 0),
        ("green_orbit", (1, 128, 128, 3), (128, 128, 1), 0),  # 13 frames: too short for 17
        ("green_orbit", (9, 128, 128, 3), (128, 128, 9), 0),
        ("red_square", (1, 96, 160, 3), (160, 96, 1), 0),
        ("red_square", (9, 96, 160, 3), (160, 96, 9), 0),
        ("red_square", (17, 96, 160, 3), (160, 96, 17), 0),
    ]
    assert all(r.frames.dtype == np.uint8 and r.frames.flags.c_contiguous for r in _records(demo))


def test_demo_clip_content_survives_decoding(demo):
    red = next(r for r in _records(demo) if r.item_key == "red_square" and r.bucket[2] == 17)
    # frame i has a red 32x32 square at x = 4 + 5i, y = 30 (no resize: the clip is its bucket's size)
    for i in (0, 8, 16):
        square = red.frames[i, 34:58, 8 + 5 * i : 32 + 5 * i].reshape(-1, 3).mean(axis=0)
        assert square[0] > 180 and square[1] < 90 and square[2] < 90
        assert red.frames[i, 34:58, 48 + 5 * i :].mean() < 80  # background to its right


def test_decoding_is_deterministic(demo, tmp_path):
    first, second = _records(demo), _records(demo)
    assert [r.latent_cache_name for r in first] == [r.latent_cache_name for r in second]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(first, second, strict=True))
    again = write_demo(tmp_path / "demo")  # the demo itself is the same bytes every time
    for path in sorted((demo.parent / "data").rglob("*.*")):
        assert (
            path.read_bytes() == (again.parent / "data" / path.relative_to(demo.parent / "data")).read_bytes()
        )


def _numbered_clip(path: Path, count: int, size: tuple[int, int] = (64, 48)) -> Path:
    """Frame i is flat gray 20 + 6i (up to 40 frames), so a decoded frame tells its own index."""
    write_clip(path, [np.full((size[1], size[0], 3), 20 + 6 * i, dtype=np.uint8) for i in range(count)], 24)
    path.with_suffix(".txt").write_text("gray levels", encoding="utf-8")
    return path


def _frame_numbers(frames: np.ndarray) -> list[int]:
    return [round((float(f.mean()) - 20) / 6) for f in frames]


def _video_dataset(tmp_path: Path, count: int, settings: str):
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    _numbered_clip(videos / "numbers.mp4", count)
    text = f'[[datasets]]\nvideo_directory = "{videos.as_posix()}"\ncaption_extension = ".txt"\nresolution = [64, 48]\n'
    config = tmp_path / "dataset.toml"
    config.write_text(text + settings, encoding="utf-8")
    (video,) = load_dataset_config(config).datasets
    return video


@pytest.mark.parametrize(
    ("settings", "windows"),
    [
        ('target_frames = [1, 9]\nframe_extraction = "head"', [(0, 1), (0, 9)]),
        ('target_frames = [5]\nframe_extraction = "chunk"', [(0, 5), (5, 5), (10, 5), (15, 5)]),
        (
            'target_frames = [9]\nframe_extraction = "slide"\nframe_stride = 4',
            [(0, 9), (4, 9), (8, 9), (12, 9)],
        ),
        ('target_frames = [5]\nframe_extraction = "uniform"\nframe_sample = 3', [(0, 5), (8, 5), (17, 5)]),
        ('frame_extraction = "full"\nmax_frames = 20', [(0, 17)]),
    ],
    ids=["head", "chunk", "slide", "uniform", "full"],
)
def test_each_mode_decodes_exactly_its_frames(tmp_path, settings, windows):
    records = list(iter_items(_video_dataset(tmp_path, 22, settings)))
    assert sorted((r.start_frame, r.bucket[2]) for r in records) == sorted(windows)
    for r in records:
        assert _frame_numbers(r.frames) == list(range(r.start_frame, r.start_frame + r.bucket[2]))
        assert r.source_frame_indices == tuple(range(r.start_frame, r.start_frame + r.bucket[2]))


def test_source_fps_drops_frames_to_24_fps(tmp_path):
    video = _video_dataset(tmp_path, 20, 'target_frames = [9]\nframe_extraction = "head"\nsource_fps = 30')
    (record,) = iter_items(video)
    # musubi-tuner's loop: frame i lands on 0.8 added up i times; exact arithmetic would take 10, not 11
    expected = [0, 2, 3, 4, 5, 7, 8, 9, 11]
    assert record.source_frame_indices == tuple(expected)
    assert _frame_numbers(record.frames) == expected
    assert record.latent_cache_name == "numbers_00000-009_0064x0048_hv.safetensors"


def test_windows_stream_in_order_of_their_last_frame(tmp_path):
    video = _video_dataset(
        tmp_path, 40, 'target_frames = [1, 25]\nframe_extraction = "slide"\nframe_stride = 10'
    )
    got = [(r.start_frame, r.bucket[2]) for r in iter_items(video)]
    assert got == [(0, 1), (10, 1), (20, 1), (0, 25), (30, 1), (10, 25)]


def test_a_long_clip_holds_at_most_one_window_of_frames(tmp_path, monkeypatch):
    video = _video_dataset(tmp_path, 40, 'target_frames = [5]\nframe_extraction = "chunk"')
    fitted, peak = [], 0
    real_fit = items_module.fit_to_bucket

    def tracking_fit(image, bucket):
        nonlocal peak
        frame = real_fit(image, bucket)
        fitted.append(weakref.ref(frame))
        peak = max(peak, sum(ref() is not None for ref in fitted))
        return frame

    monkeypatch.setattr(items_module, "fit_to_bucket", tracking_fit)
    assert [r.start_frame for r in iter_items(video)] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert len(fitted) == 40 and peak <= 6  # frames are dropped once no pending window needs them


def test_a_header_that_overcounts_is_replanned(tmp_path, monkeypatch, caplog):
    video = _video_dataset(tmp_path, 13, 'frame_extraction = "full"')
    real = probe_video(tmp_path / "videos" / "numbers.mp4")
    assert real.frame_count == 13
    monkeypatch.setattr(items_module, "probe_video", lambda path: replace(real, frame_count=30))
    with caplog.at_level(logging.WARNING):
        (record,) = iter_items(video)
    assert record.bucket[2] == 13 and "re-planned" in caplog.text
    assert _frame_numbers(record.frames) == list(range(13))


def test_a_short_video_is_skipped_with_a_warning(tmp_path, caplog):
    video = _video_dataset(tmp_path, 8, "target_frames = [9, 17]")
    with caplog.at_level(logging.WARNING):
        assert list(iter_items(video)) == []
    assert "numbers.mp4" in caplog.text and "skipped" in caplog.text


def test_probe_reports_count_size_and_rate(tmp_path):
    clip = _numbered_clip(tmp_path / "c.mp4", 7, (80, 32))
    assert probe_video(clip) == VideoInfo(7, 80, 32, 24.0)


def test_a_broken_video_is_a_media_error_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="bad.mp4"):
        probe_video(bad)


def test_a_broken_image_is_a_media_error_naming_it(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(MediaError, match="bad.png"):
        load_image(bad)


def test_an_exif_rotated_photo_is_refused_saying_what_differs_and_what_to_do(tmp_path):
    # musubi-tuner trains the stored pixels (sideways here), a viewer shows them upright: neither silently
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8)).save(path, exif=exif, quality=95)
    for read in (load_image, image_size):
        with pytest.raises(
            MediaError, match=r"phone.jpg: EXIF orientation 6 .*musubi-tuner.*mogrify -auto-orient"
        ):
            read(path)
    exif[0x0112] = 1  # "as stored": the same for both
    Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8)).save(path, exif=exif, quality=95)
    assert load_image(path).size == (100, 40) == image_size(path)


def _frame_folder(folder: Path, count: int, size: tuple[int, int] = (64, 48)) -> Path:
    """Frames named so that name order is frame order; frame i is flat gray 20 + 6i, like _numbered_clip."""
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((size[1], size[0], 3), 20 + 6 * i, dtype=np.uint8)).save(
            folder / f"f{i:04d}.png"
        )
    (folder / "notes.txt").write_text("not a frame", encoding="utf-8")
    (folder / "._f0000.png").write_bytes(b"AppleDouble")  # musubi-tuner's glob skips dot files: so do we
    return folder


def test_a_folder_of_frames_in_a_video_directory_is_one_video(tmp_path):
    # musubi-tuner globs video_directory for "*.mp4", ...: a folder named so is read as its images, sorted
    videos = tmp_path / "videos"
    _frame_folder(videos / "walk.mp4", 12, size=(96, 48))
    (videos / "walk.txt").write_text("a walk", encoding="utf-8")
    config = tmp_path / "dataset.toml"
    config.write_text(
        f'[[datasets]]\nvideo_directory = "{videos.as_posix()}"\ncaption_extension = ".txt"\n'
        'resolution = [64, 48]\ntarget_frames = [5]\nframe_extraction = "chunk"\n',
        encoding="utf-8",
    )
    (video,) = load_dataset_config(config).datasets
    (plan,) = plan_items(video)
    assert (plan.item_key, plan.caption, plan.original_size, plan.frame_count) == (
        "walk",
        "a walk",
        (96, 48),
        12,
    )
    records = list(iter_items(video))
    assert [(r.start_frame, r.bucket) for r in records] == [(0, (64, 48, 5)), (5, (64, 48, 5))]
    assert _frame_numbers(records[1].frames) == [5, 6, 7, 8, 9]


def test_a_jsonl_video_path_may_be_a_folder_of_frames(tmp_path):
    _frame_folder(tmp_path / "frames" / "clip01", 9)
    jsonl = tmp_path / "videos.jsonl"
    jsonl.write_text(
        json.dumps({"video_path": str(tmp_path / "frames" / "clip01"), "caption": "gray"}) + "\n"
    )
    config = tmp_path / "dataset.toml"
    config.write_text(
        f'[[datasets]]\nvideo_jsonl_file = "{jsonl.as_posix()}"\ncache_directory = "{tmp_path.as_posix()}/c"\n'
        "resolution = [64, 48]\ntarget_frames = [9]\n",
        encoding="utf-8",
    )
    (video,) = load_dataset_config(config).datasets
    (record,) = iter_items(video)
    assert record.item_key == "clip01" and _frame_numbers(record.frames) == list(range(9))


def test_an_empty_folder_of_frames_is_a_media_error(tmp_path):
    (tmp_path / "empty.mp4").mkdir()
    with pytest.raises(MediaError, match="empty.mp4: a folder of frames with no images"):
        probe_video(tmp_path / "empty.mp4")


def test_fit_to_bucket_crops_the_center_without_resampling_when_it_can():
    pixels = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    fitted = fit_to_bucket(Image.fromarray(pixels), (96, 96))
    # scale = max(96/200, 96/100) = 0.96 -> 192x96, crop x 48..144
    assert fitted.shape == (96, 96, 3)
    same = fit_to_bucket(Image.fromarray(pixels), (160, 100))
    assert np.array_equal(same, pixels[:, 20:180])


def test_list_captions_reads_no_media(demo, monkeypatch):
    monkeypatch.setattr(items_module, "probe_video", None)  # would raise if called
    datasets = load_dataset_config(demo).datasets
    captions = [c for d in datasets for c in list_captions(d)]
    assert [c.item_key for c in captions] == [
        "checker",
        "stripes",
        "sunset",
        "blue_ball",
        "green_orbit",
        "red_square",
    ]
    assert captions[3].caption == "a blue ball bounces up and down in a tall frame"
    assert captions[3].text_cache_name == "blue_ball_hv_te.safetensors"
    assert captions[3].source_path.name == "blue_ball.mp4"


def test_plans_name_the_cache_files_the_records_get(demo):
    for dataset in load_dataset_config(demo).datasets:
        planned = [name for plan in plan_items(dataset) for name in plan.latent_cache_names]
        assert sorted(planned) == sorted(r.latent_cache_name for r in iter_items(dataset))


def test_cache_names_follow_musubi_tuner():
    assert (
        latent_cache_name("clip", 960, 544, start_frame=8, frame_count=25)
        == "clip_00008-025_0960x0544_hv.safetensors"
    )
    assert latent_cache_name("photo", 544, 960) == "photo_0544x0960_hv.safetensors"
    assert text_cache_name("clip") == "clip_hv_te.safetensors"
    with pytest.raises(ValueError):
        latent_cache_name("clip", 960, 544, start_frame=0)


@pytest.mark.parametrize("key", ["clip", "my_clip_00001", "a b"])
def test_cache_names_parse_back(key):
    video = latent_cache_name(key, 1280, 720, start_frame=12, frame_count=129)
    parsed = parse_latent_cache_name(video, is_video=True)
    assert (parsed.item_key, parsed.width, parsed.height, parsed.start_frame, parsed.frame_count) == (
        key,
        1280,
        720,
        12,
        129,
    )
    image = parse_latent_cache_name(latent_cache_name(key, 16, 32), is_video=False)
    assert (image.item_key, image.width, image.height, image.start_frame) == (key, 16, 32, None)
    assert parse_latent_cache_name(text_cache_name(key), is_video=False) is None
