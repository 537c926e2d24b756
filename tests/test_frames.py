"""Frame extraction: every mode's windows, frame by frame, against musubi-tuner's documented diagrams."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataset.frames import (
    FrameWindow,
    frame_windows,
    is_vae_frame_count,
    resampled_frame_count,
    resampled_to_source,
    round_down_to_vae_frames,
)

# musubi-tuner's dataset_config.md, "frame_extraction Options", a 40-frame video; x = an extracted frame.
MUSUBI_DIAGRAMS = [  # (mode, target_frames, options, diagram)
    (
        "head",
        (1, 13, 25),
        {},
        """
xooooooooooooooooooooooooooooooooooooooo
xxxxxxxxxxxxxooooooooooooooooooooooooooo
xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo
""",
    ),
    (
        "chunk",
        (13, 25),
        {},
        """
xxxxxxxxxxxxxooooooooooooooooooooooooooo
oooooooooooooxxxxxxxxxxxxxoooooooooooooo
ooooooooooooooooooooooooooxxxxxxxxxxxxxo
xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo
""",
    ),
    (
        "slide",
        (1, 13, 25),
        {"frame_stride": 10},
        """
xooooooooooooooooooooooooooooooooooooooo
ooooooooooxooooooooooooooooooooooooooooo
ooooooooooooooooooooxooooooooooooooooooo
ooooooooooooooooooooooooooooooxooooooooo
xxxxxxxxxxxxxooooooooooooooooooooooooooo
ooooooooooxxxxxxxxxxxxxooooooooooooooooo
ooooooooooooooooooooxxxxxxxxxxxxxooooooo
xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo
ooooooooooxxxxxxxxxxxxxxxxxxxxxxxxxooooo
""",
    ),
    # the doc draws the third 1-frame window at 25; its code, int(np.linspace(0, 39, 4)[2]), gives 26: we follow the code
    (
        "uniform",
        (1, 13, 25),
        {"frame_sample": 4},
        """
xooooooooooooooooooooooooooooooooooooooo
oooooooooooooxoooooooooooooooooooooooooo
ooooooooooooooooooooooooooxooooooooooooo
ooooooooooooooooooooooooooooooooooooooox
xxxxxxxxxxxxxooooooooooooooooooooooooooo
oooooooooxxxxxxxxxxxxxoooooooooooooooooo
ooooooooooooooooooxxxxxxxxxxxxxooooooooo
oooooooooooooooooooooooooooxxxxxxxxxxxxx
xxxxxxxxxxxxxxxxxxxxxxxxxooooooooooooooo
oooooxxxxxxxxxxxxxxxxxxxxxxxxxoooooooooo
ooooooooooxxxxxxxxxxxxxxxxxxxxxxxxxooooo
oooooooooooooooxxxxxxxxxxxxxxxxxxxxxxxxx
""",
    ),
]


def _rows_to_windows(diagram: str) -> list[FrameWindow]:
    windows = []
    for row in diagram.split():
        start = row.index("x")
        windows.append(FrameWindow(start, row.count("x")))
        assert row[start : start + row.count("x")] == "x" * row.count("x")  # the diagram itself is contiguous
    return windows


@pytest.mark.parametrize(
    ("mode", "targets", "options", "diagram"), MUSUBI_DIAGRAMS, ids=[d[0] for d in MUSUBI_DIAGRAMS]
)
def test_modes_match_musubi_diagrams(mode, targets, options, diagram):
    assert frame_windows(40, mode, targets, **options) == _rows_to_windows(diagram)


def test_explicit_indices_of_each_mode():
    # the worked example of docs/dataset.md: a 30-frame clip
    assert [list(w.indices) for w in frame_windows(30, "head", (9,))] == [list(range(0, 9))]
    assert [(w.start, w.count) for w in frame_windows(30, "chunk", (9,))] == [(0, 9), (9, 9), (18, 9)]
    assert [(w.start, w.count) for w in frame_windows(30, "slide", (9,), frame_stride=8)] == [
        (0, 9),
        (8, 9),
        (16, 9),
    ]
    assert [(w.start, w.count) for w in frame_windows(30, "uniform", (9,), frame_sample=3)] == [
        (0, 9),
        (10, 9),
        (21, 9),
    ]
    assert [list(w.indices) for w in frame_windows(30, "full", (9,), max_frames=129)] == [list(range(0, 29))]
    assert frame_windows(30, "full", (9,), max_frames=20) == [FrameWindow(0, 17)]


def test_targets_longer_than_the_clip_yield_nothing():
    assert frame_windows(8, "head", (1, 9, 17)) == [FrameWindow(0, 1)]
    assert frame_windows(8, "chunk", (9,)) == []
    assert frame_windows(8, "slide", (9,), frame_stride=1) == []
    assert frame_windows(8, "uniform", (9,), frame_sample=3) == []
    assert frame_windows(0, "full", (1,)) == []


def test_chunk_drops_the_short_tail_and_slide_stops_at_the_last_full_window():
    assert frame_windows(20, "chunk", (5,)) == [
        FrameWindow(0, 5),
        FrameWindow(5, 5),
        FrameWindow(10, 5),
        FrameWindow(15, 5),
    ]
    assert frame_windows(19, "chunk", (5,)) == [FrameWindow(0, 5), FrameWindow(5, 5), FrameWindow(10, 5)]
    assert [w.start for w in frame_windows(12, "slide", (5,), frame_stride=3)] == [0, 3, 6]


def test_uniform_keeps_identical_windows_once():
    # linspace(0, 1, 4) truncates to 0, 0, 0, 1: one cache file per distinct window
    assert frame_windows(6, "uniform", (5,), frame_sample=4) == [FrameWindow(0, 5), FrameWindow(1, 5)]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="slid"):
        frame_windows(10, "slid", (1,))


@pytest.mark.parametrize(
    ("n", "expected"), [(1, 1), (2, 1), (4, 1), (5, 5), (24, 21), (25, 25), (128, 125), (129, 129)]
)
def test_round_down_to_vae_frames(n, expected):
    assert round_down_to_vae_frames(n) == expected
    assert is_vae_frame_count(expected)
    assert is_vae_frame_count(n) == (n == expected)


def test_round_down_rejects_zero():
    with pytest.raises(ValueError):
        round_down_to_vae_frames(0)


def test_resampling_30_to_24_fps_drops_every_fifth_frame():
    # source frame i lands on floor(i * 24/30); the first to land on each resampled frame is kept
    assert resampled_frame_count(10, 30) == 8
    assert [resampled_to_source(j, 30) for j in range(8)] == [0, 2, 3, 4, 5, 7, 8, 9]
    assert [resampled_to_source(j, 60) for j in range(5)] == [0, 3, 5, 8, 10]


@pytest.mark.parametrize("fps", [None, 24, 12, 23.976])
def test_no_resampling_at_or_below_24_fps(fps):
    assert resampled_frame_count(50, fps) == 50
    assert [resampled_to_source(j, fps) for j in range(50)] == list(range(50))


def _musubi_kept_frames(count: int, source_fps: float, target_fps: int = 24) -> list[int]:
    """musubi-tuner's frame-dropping loop, with exact arithmetic: keep i when floor(i * target/source) is new."""
    delta = Fraction(target_fps) / Fraction(str(source_fps))
    kept, previous = [], -1
    for i in range(count):
        landing = math.floor(i * delta)
        if landing != previous:
            kept.append(i)
            previous = landing
    return kept


@given(st.integers(1, 400), st.sampled_from([25, 29.97, 30, 48, 50, 59.94, 60, 120]))
def test_resampling_matches_musubis_frame_dropping(count, fps):
    kept = _musubi_kept_frames(count, fps)
    assert resampled_frame_count(count, fps) == len(kept)
    assert [resampled_to_source(j, fps) for j in range(len(kept))] == kept
