"""Buckets by area (musubi-tuner's rule), nearest aspect ratio, no_upscale, and the resize + center-crop plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataset.buckets import BucketSelector, bucket_resolutions, resize_plan

BUCKETS_960x544 = [
    (352, 1472),
    (368, 1408),
    (384, 1360),
    (400, 1296),
    (416, 1248),
    (432, 1200),
    (448, 1152),
    (464, 1120),
    (480, 1088),
    (496, 1040),
    (512, 1008),
    (528, 976),
    (544, 960),
    (560, 928),
    (576, 896),
    (592, 880),
    (608, 848),
    (624, 832),
    (640, 816),
    (656, 784),
    (672, 768),
    (688, 752),
    (704, 736),
    (720, 720),
    (736, 704),
    (752, 688),
    (768, 672),
    (784, 656),
    (816, 640),
    (832, 624),
    (848, 608),
    (880, 592),
    (896, 576),
    (928, 560),
    (960, 544),
    (976, 528),
    (1008, 512),
    (1040, 496),
    (1088, 480),
    (1120, 464),
    (1152, 448),
    (1200, 432),
    (1248, 416),
    (1296, 400),
    (1360, 384),
    (1408, 368),
    (1472, 352),
]

# area 65536, sqrt 256: widths 128..256 step 16, h = 65536 // w rounded down to 16, both orientations
BUCKETS_256 = [
    (128, 512),
    (144, 448),
    (160, 400),
    (176, 368),
    (192, 336),
    (208, 304),
    (224, 288),
    (240, 272),
    (256, 256),
    (272, 240),
    (288, 224),
    (304, 208),
    (336, 192),
    (368, 176),
    (400, 160),
    (448, 144),
    (512, 128),
]


def test_bucket_list_960x544():
    assert bucket_resolutions((960, 544)) == BUCKETS_960x544


def test_bucket_list_256x256():
    assert bucket_resolutions((256, 256)) == BUCKETS_256


@given(st.integers(16, 2048), st.integers(16, 2048))
def test_buckets_are_multiples_of_16_within_the_area_in_both_orientations(w, h):
    buckets = bucket_resolutions((w, h))
    assert buckets == sorted(set(buckets))
    for bw, bh in buckets:
        assert bw % 16 == 0 and bh % 16 == 0
        assert bw * bh <= w * h
        assert (bh, bw) in buckets


@pytest.mark.parametrize(
    ("size", "bucket"),
    [
        ((1920, 1080), (960, 544)),  # 16:9 -> 1.765, the nearest of 1.778
        ((1080, 1920), (544, 960)),
        ((1000, 1000), (720, 720)),
        ((1440, 1080), (832, 624)),  # 4:3 exactly
        ((500, 2000), (352, 1472)),  # narrower than every bucket: the narrowest
        ((100, 50), (1008, 512)),  # small sources are scaled up to the area
    ],
)
def test_nearest_aspect_ratio_wins(size, bucket):
    assert BucketSelector((960, 544), enable_bucket=True).select(*size) == bucket


def test_no_upscale_keeps_small_sources_at_their_size_rounded_down_to_16():
    selector = BucketSelector((960, 544), enable_bucket=True, no_upscale=True)
    assert selector.select(300, 200) == (288, 192)
    assert selector.select(640, 480) == (640, 480)
    assert selector.select(1920, 1080) == (960, 544)  # larger than the area: bucketed as usual
    with pytest.raises(ValueError, match="too small"):  # musubi-tuner's bucket would be 0 wide: it fails too
        selector.select(10, 40)


def test_disabled_buckets_put_everything_at_the_resolution():
    selector = BucketSelector((960, 544), enable_bucket=False, no_upscale=True)
    assert selector.buckets == ((960, 544),)
    assert {selector.select(*s) for s in [(1080, 1920), (300, 200), (960, 544)]} == {(960, 544)}


def test_resize_plan_covers_then_crops_the_center():
    plan = resize_plan((1920, 1080), (960, 544))
    assert plan.resized == (967, 544)  # scale = max(960/1920, 544/1080)
    assert plan.box == (3, 0, 963, 544)
    plan = resize_plan((100, 50), (256, 256))
    assert plan.resized == (512, 256)
    assert plan.box == (128, 0, 384, 256)
    assert resize_plan((640, 480), (640, 480)).box == (0, 0, 640, 480)


@given(st.integers(1, 4000), st.integers(1, 4000), st.integers(1, 120), st.integers(1, 120))
def test_resize_plan_always_yields_exactly_the_bucket(w, h, bw16, bh16):
    bucket = (bw16 * 16, bh16 * 16)
    plan = resize_plan((w, h), bucket)
    left, top, right, bottom = plan.box
    assert (right - left, bottom - top) == bucket
    assert min(left, top) >= 0 and right <= plan.resized[0] and bottom <= plan.resized[1]
    # centered: the two margins differ by at most one pixel
    assert abs(left - (plan.resized[0] - right)) <= 1 and abs(top - (plan.resized[1] - bottom)) <= 1
