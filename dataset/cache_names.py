"""Cache file names, musubi-tuner's pattern, so a cache directory reads the same in both tools.

latents, video:  {item_key}_{start:05d}-{frames:03d}_{w:04d}x{h:04d}_hv.safetensors
latents, image:  {item_key}_{w:04d}x{h:04d}_hv.safetensors
text encoders:   {item_key}_hv_te.safetensors   (one per media file: every window shares the caption)

w x h is the size musubi-tuner names a file by, so both tools name it alike (name_size): an image's original
size, a video window's bucket (musubi-tuner resizes video frames to the bucket while decoding and names the
window by the decoded size). The trainer checks each file's shape against its item's bucket.
All latent files of the architecture match *_hv.safetensors, all text files *_hv_te.safetensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ARCHITECTURE = "hv"
LATENT_SUFFIX = f"_{ARCHITECTURE}.safetensors"
TEXT_SUFFIX = f"_{ARCHITECTURE}_te.safetensors"
LATENT_GLOB, TEXT_GLOB = f"*{LATENT_SUFFIX}", f"*{TEXT_SUFFIX}"  # musubi-tuner's globs

_VIDEO_NAME = re.compile(
    rf"^(?P<key>.+)_(?P<start>\d{{5,}})-(?P<frames>\d{{3,}})_(?P<w>\d{{4,}})x(?P<h>\d{{4,}}){LATENT_SUFFIX}$"
)
_IMAGE_NAME = re.compile(rf"^(?P<key>.+)_(?P<w>\d{{4,}})x(?P<h>\d{{4,}}){LATENT_SUFFIX}$")


def latent_cache_name(
    item_key: str, width: int, height: int, *, start_frame: int | None = None, frame_count: int | None = None
) -> str:
    """The latent cache file name: a video window when start_frame and frame_count are given, else an image.
    width x height: name_size()."""
    if (start_frame is None) != (frame_count is None):
        raise ValueError("give both start_frame and frame_count (a video window) or neither (an image)")
    size = f"{width:04d}x{height:04d}"
    if start_frame is None:
        return f"{item_key}_{size}{LATENT_SUFFIX}"
    return f"{item_key}_{start_frame:05d}-{frame_count:03d}_{size}{LATENT_SUFFIX}"


def name_size(
    is_video: bool, original_size: tuple[int, int], bucket_size: tuple[int, int]
) -> tuple[int, int]:
    """The (width, height) in a latent file's name and its width / height metadata, as musubi-tuner writes them."""
    return bucket_size if is_video else original_size


def text_cache_name(item_key: str) -> str:
    """The text-encoder cache file name of an item (its caption's LLM and CLIP outputs)."""
    return f"{item_key}{TEXT_SUFFIX}"


@dataclass(frozen=True)
class LatentCacheName:
    item_key: str
    width: int
    height: int
    start_frame: int | None = None  # None for an image
    frame_count: int | None = None

    @property
    def text_cache_name(self) -> str:
        return text_cache_name(self.item_key)


def parse_latent_cache_name(name: str, *, is_video: bool) -> LatentCacheName | None:
    """Read a latent cache file name back; None if it is not one (of that kind). Inverse of latent_cache_name."""
    match = (_VIDEO_NAME if is_video else _IMAGE_NAME).match(name)
    if match is None:
        return None
    size = int(match["w"]), int(match["h"])
    if not is_video:
        return LatentCacheName(match["key"], *size)
    return LatentCacheName(match["key"], *size, int(match["start"]), int(match["frames"]))
