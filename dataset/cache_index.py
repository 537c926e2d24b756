"""Which cache files a run trains: exactly the items the dataset TOML describes, each file header-checked.

With the dataset's media at hand, the items are planned from the TOML (headers only, as the cache commands
do) and each item's files must be there and match its bucket; files in the folder that no item produces
(stale windows, removed images, --keep_cache leftovers) are not trained, and one log line says how many.
Without the media (a folder of caches copied alone), every latent file of the architecture is trained, as
musubi-tuner does, with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .cache_files import CacheFileError, check_latent_file, check_text_file
from .cache_names import LATENT_GLOB, TEXT_GLOB, parse_latent_cache_name, text_cache_name
from .cache_stale import unused_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedItem:
    latent_path: Path
    text_path: Path
    bucket: tuple[int, ...]  # latent shape (C, F, H, W)


def index_cache(cache_directory: Path, dataset=None) -> list[CachedItem]:
    """The items to train from a cache folder: the dataset's (when its media is there), else every file."""
    if not cache_directory.is_dir():
        raise CacheFileError(f"cache directory not found: {cache_directory}; run cache_latents.py first")
    if dataset is not None and _media_present(dataset):
        items = _planned(dataset)
    else:
        if dataset is not None:
            logger.warning(
                "%s: its media is not there; training every cache file in %s (the items the TOML "
                "describes cannot be listed)",
                dataset.origin.where(),
                cache_directory,
            )
        items = _every_file(cache_directory, None if dataset is None else dataset.is_video)
    if not items:
        raise CacheFileError(f"no cached latents in {cache_directory}: run cache_latents.py first")
    return items


def _media_present(dataset) -> bool:
    return Path(getattr(dataset, dataset.source_key)).exists()


def _planned(dataset) -> list[CachedItem]:
    from .items import plan_items  # here: items imports media decoding, which the glob path does not need

    folder = dataset.cache_directory
    items, texts = [], {}
    for plan in plan_items(dataset):
        text = folder / text_cache_name(plan.item_key)
        for window in plan.windows:
            name = plan.latent_cache_name(window)
            latent = folder / name
            if not latent.is_file():
                raise CacheFileError(
                    f"no latent cache {latent} for {plan.source_path} (the dataset TOML "
                    "describes it): run cache_latents.py"
                )
            if not text.is_file():
                raise CacheFileError(
                    f"no text cache {text} for {plan.source_path}: run cache_text_encoder_outputs.py"
                )
            parsed = parse_latent_cache_name(name, is_video=plan.is_video)
            shape = check_latent_file(latent, parsed, (*plan.bucket_size, window.count))
            if text not in texts:
                texts[text] = check_text_file(text)
            items.append(CachedItem(latent, text, shape))
    items.sort(key=lambda item: item.latent_path)
    used = {item.latent_path.name for item in items} | {p.name for p in texts}
    unused = unused_files(folder, LATENT_GLOB, used) + unused_files(folder, TEXT_GLOB, used)
    if unused:
        logger.info(
            "%s: %d cache file(s) belong to no item of the dataset TOML and are not trained (e.g. %s); "
            "the cache commands delete such files unless --keep_cache",
            folder,
            len(unused),
            unused[0].name,
        )
    return items


def _every_file(folder: Path, is_video: bool | None) -> list[CachedItem]:
    """musubi-tuner's rule: every *_hv.safetensors file with its text file; the name tells the item."""
    items, texts = [], {}
    kinds = (True, False) if is_video is None else (is_video,)
    for latent in sorted(folder.glob(LATENT_GLOB)):
        parsed = next((n for k in kinds if (n := parse_latent_cache_name(latent.name, is_video=k))), None)
        if parsed is None:
            raise CacheFileError(
                f"{latent}: not a cache file name of the form KEY_WIDTHxHEIGHT_hv.safetensors "
                "(or KEY_START-FRAMES_WIDTHxHEIGHT_hv.safetensors); move it out of the folder"
            )
        shape = check_latent_file(latent, parsed)
        text = folder / parsed.text_cache_name
        if not text.is_file():
            raise CacheFileError(f"no text cache for {latent.name}: run cache_text_encoder_outputs.py")
        if text not in texts:
            texts[text] = check_text_file(text)
        items.append(CachedItem(latent, text, shape))
    return items
