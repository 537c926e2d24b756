"""What the cache commands iterate: for each media file and each extracted window, frames fitted to the bucket.

Two steps, so that `--skip_existing` can decide without decoding anything:
  plan_items(dataset)         cheap (headers only): item key, caption, bucket, windows, cache file names
  load_item(dataset, plan)    decodes one file and yields an ItemRecord per window
iter_items(dataset) chains both. list_captions(dataset) is all the text-encoder cache needs.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .cache_names import latent_cache_name, name_size, text_cache_name
from .config import DatasetConfig, VideoDatasetConfig
from .errors import MediaError
from .frames import FrameWindow, frame_windows, read_end, source_timeline
from .media import decode_frames, fit_to_bucket, image_size, load_image, probe_video
from .sources import MediaEntry, list_media

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionRecord:
    item_key: str
    caption: str
    source_path: Path

    @property
    def text_cache_name(self) -> str:
        return text_cache_name(self.item_key)


@dataclass(frozen=True)
class ItemPlan:
    """One media file, known from its header: how it will be bucketed and which windows it yields."""

    item_key: str
    caption: str
    source_path: Path
    is_video: bool
    original_size: tuple[int, int]  # (width, height) of the source, EXIF orientation applied
    bucket_size: tuple[int, int]  # (width, height)
    frame_count: int  # frames on the timeline; 1 for an image
    windows: tuple[FrameWindow, ...]  # on the timeline; (FrameWindow(0, 1),) for an image
    timeline: tuple[int, ...] = (0,)  # source frame number of each timeline frame (frames.source_timeline)

    def latent_cache_name(self, window: FrameWindow) -> str:
        w, h = name_size(self.is_video, self.original_size, self.bucket_size)  # as musubi-tuner names it
        if not self.is_video:
            return latent_cache_name(self.item_key, w, h)
        return latent_cache_name(self.item_key, w, h, start_frame=window.start, frame_count=window.count)

    @property
    def latent_cache_names(self) -> list[str]:
        return [self.latent_cache_name(window) for window in self.windows]


@dataclass(frozen=True, eq=False)
class ItemRecord:
    """One window of one media file, ready for the VAE."""

    item_key: str
    caption: str
    frames: np.ndarray  # (F, H, W, 3) uint8, resized and center-cropped to the bucket
    bucket: tuple[int, int, int]  # (width, height, frame_count)
    start_frame: int  # first frame of the window on the resampled timeline; 0 for an image
    source_path: Path
    is_video: bool
    original_size: tuple[int, int]  # (width, height) of the source
    source_frame_indices: tuple[int, ...]  # decoded frame numbers in the window (differ when resampled)

    @property
    def latent_cache_name(self) -> str:
        (w, h), f = name_size(self.is_video, self.original_size, self.bucket[:2]), self.bucket[2]
        if not self.is_video:
            return latent_cache_name(self.item_key, w, h)
        return latent_cache_name(self.item_key, w, h, start_frame=self.start_frame, frame_count=f)

    @property
    def text_cache_name(self) -> str:
        return text_cache_name(self.item_key)


def list_captions(dataset: DatasetConfig) -> list[CaptionRecord]:
    """Every item's caption, without decoding media (for the text-encoder cache)."""
    return [CaptionRecord(e.item_key, e.caption, e.path) for e in list_media(dataset)]


def iter_items(dataset: DatasetConfig) -> Iterator[ItemRecord]:
    """Every window of every media file, in file order; a video's windows in the order their last frame decodes."""
    for plan in plan_items(dataset):
        yield from load_item(dataset, plan)


def plan_items(dataset: DatasetConfig) -> Iterator[ItemPlan]:
    """A plan per media file, from headers only. A video shorter than every window is skipped with a warning."""
    selector = dataset.bucket_selector()
    for entry in list_media(dataset):
        plan = _video_plan(dataset, entry) if isinstance(dataset, VideoDatasetConfig) else _image_plan(entry)
        if plan is None:
            continue
        try:
            bucket = selector.select(*plan.original_size)
        except ValueError as e:
            raise MediaError(f"{plan.source_path}: {e}") from None
        yield replace(plan, bucket_size=bucket)


def _image_plan(entry: MediaEntry) -> ItemPlan:
    size = image_size(entry.path)
    return ItemPlan(entry.item_key, entry.caption, entry.path, False, size, size, 1, (FrameWindow(0, 1),))


def _video_plan(dataset: VideoDatasetConfig, entry: MediaEntry) -> ItemPlan | None:
    info = probe_video(entry.path)
    timeline = _timeline(dataset, info.frame_count)
    count = len(timeline)
    windows = tuple(_video_windows(dataset, count))
    if not windows:
        logger.warning(
            f"{entry.path}: {count} frames, shorter than every window of {dataset.origin.where()} "
            f"(target_frames {list(dataset.target_frames)}); skipped"
        )
        return None
    size = (info.width, info.height)
    _check_musubi_batches(dataset, entry, size)
    return ItemPlan(entry.item_key, entry.caption, entry.path, True, size, size, count, windows, timeline)


def _check_musubi_batches(dataset: VideoDatasetConfig, entry: MediaEntry, size: tuple[int, int]) -> None:
    """musubi-tuner caches every video bucketed but batches a small one (no larger than the area) by its own
    size when bucket_no_upscale is set: with batch_size > 1 its batches would differ from ours, so stop."""
    w, h = dataset.resolution
    if (
        dataset.enable_bucket
        and dataset.bucket_no_upscale
        and dataset.batch_size > 1
        and size[0] * size[1] <= w * h
    ):
        raise dataset.origin.error(
            "bucket_no_upscale",
            f"{entry.path} ({size[0]}x{size[1]}) is no larger than resolution: musubi-tuner would batch it by its "
            "own size while training it bucketed, so its batches differ from this trainer's; set "
            "bucket_no_upscale = false for this dataset (videos are always bucketed: nothing else changes)",
        )


def _timeline(dataset: VideoDatasetConfig, frame_count: int) -> tuple[int, ...]:
    end = read_end(dataset.frame_extraction, dataset.target_frames)
    return tuple(source_timeline(frame_count, dataset.source_fps, end))


def _video_windows(dataset: VideoDatasetConfig, frame_count: int) -> list[FrameWindow]:
    return frame_windows(
        frame_count,
        dataset.frame_extraction,
        dataset.target_frames,
        frame_stride=dataset.frame_stride,
        frame_sample=dataset.frame_sample,
        max_frames=dataset.max_frames,
    )


def load_item(dataset: DatasetConfig, plan: ItemPlan) -> Iterator[ItemRecord]:
    """Decode one planned media file and yield a record per window."""
    if not plan.is_video:
        frames = fit_to_bucket(load_image(plan.source_path), plan.bucket_size)[None]
        yield _record(plan, FrameWindow(0, 1), frames, (0,))
        return
    assert isinstance(dataset, VideoDatasetConfig)  # plan_items plans videos for video datasets only
    emitted: set[FrameWindow] = set()
    decoded = yield from _stream_windows(plan, plan.windows, emitted)
    if decoded is None:
        return
    # the header promised more frames than the file holds: plan again with the true count
    replan = replace(plan, timeline=_timeline(dataset, decoded))
    count = len(replan.timeline)
    logger.warning(
        f"{plan.source_path}: the header says {plan.frame_count} frames, {count} decoded; windows re-planned"
    )
    remaining = [w for w in _video_windows(dataset, count) if w not in emitted]
    if (yield from _stream_windows(replan, tuple(remaining), emitted)) is not None:
        raise MediaError(f"{plan.source_path}: decoding stopped early twice; the file is damaged")


def _stream_windows(
    plan: ItemPlan, windows: tuple[FrameWindow, ...], emitted: set[FrameWindow]
) -> Generator[ItemRecord, None, int | None]:
    """Decode once, yield each window as soon as its last frame is in, drop frames no pending window needs.

    Memory is bounded by the longest window, not the clip. Returns None when every window was yielded,
    else the number of frames the file really has.
    """
    if not windows:
        return None

    def src(index: int) -> int:
        return plan.timeline[index]

    pending = sorted(windows, key=lambda w: src(w.start + w.count - 1))  # stable: ties keep plan order
    starts = [(src(w.start), i) for i, w in enumerate(pending)]
    heapq.heapify(starts)
    wanted = {src(j) for w in windows for j in w.indices}
    buffer: dict[int, np.ndarray] = {}  # decoded frame number -> fitted frame, in increasing order
    done = 0
    seen = 0
    for index, image in decode_frames(plan.source_path, wanted):
        seen = index + 1
        if image is not None:
            buffer[index] = fit_to_bucket(image, plan.bucket_size)
        while done < len(pending) and src(pending[done].start + pending[done].count - 1) <= index:
            window = pending[done]
            indices = tuple(src(j) for j in window.indices)
            yield _record(plan, window, np.stack([buffer[i] for i in indices]), indices)
            emitted.add(window)
            done += 1
        while starts and starts[0][1] < done:  # windows already yielded no longer hold their frames
            heapq.heappop(starts)
        low = starts[0][0] if starts else seen
        while buffer and next(iter(buffer)) < low:
            del buffer[next(iter(buffer))]
    return None if done == len(pending) else seen


def _record(
    plan: ItemPlan, window: FrameWindow, frames: np.ndarray, source_indices: tuple[int, ...]
) -> ItemRecord:
    return ItemRecord(
        item_key=plan.item_key,
        caption=plan.caption,
        frames=frames,
        bucket=(*plan.bucket_size, window.count),
        start_frame=window.start,
        source_path=plan.source_path,
        is_video=plan.is_video,
        original_size=plan.original_size,
        source_frame_indices=source_indices,
    )
