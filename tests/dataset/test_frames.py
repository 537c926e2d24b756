"""Frame extraction: every mode's windows, frame by frame, against musubi-tuner's documented diagrams."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataset.frames import (
    FrameWindow,
    frame_windows,
    is_vae_frame_count,
    normalise_target_frames,
    read_end,
    round_down_to_vae_frames,
    source_timeline,
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
    # musubi-tuner adds 24/30 = 0.8 up in floating point: 0.8 * 5 comes out just under 4 once in a while,
    # so at 30 fps it keeps frame 11 where exact arithmetic would keep 10 (counts are equal)
    assert source_timeline(10, 30.0) == [0, 2, 3, 4, 5, 7, 8, 9]
    assert source_timeline(16, 30.0) == [0, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 15]
    assert source_timeline(13, 60.0) == [0, 3, 5, 8, 11]  # exact: 10; 0.4 added ten times is under 4


@pytest.mark.parametrize("fps", [None, 24.0])
def test_no_resampling_without_source_fps_or_at_24(fps):
    assert source_timeline(50, fps) == list(range(50))


def test_below_24_fps_nothing_is_dropped_but_head_stops_reading_early():
    # 20 fps: frame i lands on int(i * 1.2): every frame is new, numbers skip ahead (5 lands on 6)
    assert source_timeline(30, 20.0) == list(range(30))
    # head stops at the first frame landing at max(target_frames) or later: 21 frames for an end of 25
    assert source_timeline(30, 20.0, end=25) == list(range(21))
    assert source_timeline(30, None, end=25) == list(range(25))


def test_target_frames_are_rounded_deduplicated_and_sorted():
    assert normalise_target_frames((25, 1, 24, 21, 9)) == (1, 9, 21, 25)
    assert read_end("head", (1, 25, 9)) == 25
    assert read_end("slide", (1, 25)) is None


def _musubi_loop(count: int, source_fps: float, end: int | None) -> list[int]:
    """musubi-tuner's media_utils.load_video frame loop with the decoding taken out (written out here, not
    imported, so that a change to source_timeline is checked against the loop as musubi-tuner has it)."""
    delta = 24.0 / source_fps
    kept, fraction, previous = [], 0.0, -1
    for i in range(count):
        target = int(fraction)
        fraction += delta
        if target == previous:
            continue
        previous = target
        if end is not None and target >= end:
            break
        kept.append(i)
    return kept


@given(
    st.integers(1, 400),
    st.sampled_from([12.0, 15.0, 20.0, 23.976, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0, 120.0]),
    st.sampled_from([None, 1, 9, 25, 45]),
)
def test_resampling_follows_musubis_loop(count, fps, end):
    assert source_timeline(count, fps, end) == _musubi_loop(count, fps, end)
