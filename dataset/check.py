"""Check a dataset TOML and show what caching will make of it: `python -m dataset.check CONFIG [--decode]`.

Lists every dataset's settings, each media file's bucket and windows, and the cache files they become
(headers only). --decode also decodes every window, as the latent cache will. A bad config or an
unreadable file is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import DatasetConfig, VideoDatasetConfig, load_dataset_config
from .errors import DatasetConfigError, MediaError
from .items import load_item, plan_items


def describe(dataset: DatasetConfig, decode: bool) -> None:
    source = getattr(dataset, dataset.source_key)
    print(f"{dataset.origin.where()}: {dataset.source_key} = {source}")
    print(
        f"  resolution {dataset.resolution[0]}x{dataset.resolution[1]}, enable_bucket {dataset.enable_bucket}, "
        f"bucket_no_upscale {dataset.bucket_no_upscale}, batch_size {dataset.batch_size}, "
        f"num_repeats {dataset.num_repeats}, cache_directory {dataset.cache_directory}"
    )
    if isinstance(dataset, VideoDatasetConfig):  # is_video, in a form that narrows the type
        print("  videos are always bucketed (as musubi-tuner caches them)")
        print(
            f"  frame_extraction {dataset.frame_extraction}, target_frames {list(dataset.target_frames)}, "
            f"frame_stride {dataset.frame_stride}, frame_sample {dataset.frame_sample}, "
            f"max_frames {dataset.max_frames}, source_fps {dataset.source_fps}"
        )
    for plan in plan_items(dataset):
        (w, h), (bw, bh) = plan.original_size, plan.bucket_size
        frames = f", {plan.frame_count} frames" if plan.is_video else ""
        print(f"  {plan.source_path.name}: {w}x{h}{frames} -> bucket {bw}x{bh}")
        for window, name in zip(plan.windows, plan.latent_cache_names, strict=True):
            span = f"frames {window.start}..{window.start + window.count - 1}  " if plan.is_video else ""
            print(f"    {span}{name}")
        if decode:
            for record in load_item(dataset, plan):
                print(f"    decoded {record.latent_cache_name}: {tuple(record.frames.shape)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset_config")
    parser.add_argument("--decode", action="store_true", help="also decode every window")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        blueprint = load_dataset_config(args.dataset_config)
        for dataset in blueprint.all_datasets:
            describe(dataset, args.decode)
    except (DatasetConfigError, MediaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
