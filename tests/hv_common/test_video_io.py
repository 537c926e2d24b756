"""Preview files: H.264 mp4 round trip, PNG for one frame, even sizes, atomic writes."""

import numpy as np
import pytest
import torch

from hv_common.video_io import read_frames, video_fps, write_media, write_mp4, write_png


def ramp_video(frames: int = 5, height: int = 64, width: int = 48) -> np.ndarray:
    """Each frame a flat gray a step brighter than the last, with a bright square: easy to tell apart."""
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        video[i] = 30 + 40 * i
        video[i, 8:24, 8:24] = (250, 40, 40)
    return video


def test_mp4_round_trip_keeps_frames_size_order_and_fps(tmp_path):
    video = ramp_video()
    path = write_media(torch.from_numpy(video), tmp_path / "clip")
    assert path == tmp_path / "clip.mp4"
    back = read_frames(path)
    assert back.shape == video.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - video.astype(int)).mean() < 4  # near-lossless H.264
    brightness = back[:, 40:, 30:].mean(axis=(1, 2, 3))
    assert np.all(np.diff(brightness) > 30)  # the frames stay in order
    assert video_fps(path) == 24
    with open(path, "rb") as f:
        assert f.read(12)[4:8] == b"ftyp"  # an mp4 container


def test_one_frame_is_an_exact_png(tmp_path):
    frame = ramp_video(frames=1)
    path = write_media(frame, tmp_path / "still")
    assert path == tmp_path / "still.png"
    assert np.array_equal(read_frames(path), frame)
    single = write_png(frame[0], tmp_path / "direct.png")  # (H, W, 3) works too
    assert np.array_equal(read_frames(single), frame)


def test_odd_sizes_are_padded_to_even_for_yuv420(tmp_path):
    video = ramp_video(frames=3, height=33, width=31)
    back = read_frames(write_mp4(video, tmp_path / "odd.mp4", fps=8))
    assert back.shape == (3, 34, 32, 3)
    assert video_fps(tmp_path / "odd.mp4") == 8


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="expected uint8 frames"):
        write_media(np.zeros((2, 8, 8, 3), dtype=np.float32), tmp_path / "x")
    with pytest.raises(ValueError, match="expected uint8 frames"):
        write_media(np.zeros((2, 8, 8), dtype=np.uint8), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import av

    path = write_mp4(ramp_video(frames=3), tmp_path / "clip.mp4")
    old = path.read_bytes()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("disk gone")
        return original(*args, **kwargs)

    original = av.VideoFrame.from_ndarray
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        write_mp4(ramp_video(frames=5), path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
