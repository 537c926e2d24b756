"""A small writer of HunyuanVideo caches as musubi-tuner (main, 30c658c) writes them, for the tests.

It follows musubi-tuner's code, not ours: dataset/cache_io.py save_latent_cache / save_text_encoder_output_cache
(keys `latents_{F}x{H}x{W}_{dtype}`, `llm_{dtype}` + `llm_mask`, `clipL_{dtype}` + `clipL_mask`, metadata
architecture / width / height / frame_count / caption1 / format_version) and image_video_dataset.py's names
(`{stem}_{W:04d}x{H:04d}_hv`, videos `{stem}_{start:05d}-{frames:03d}_{W:04d}x{H:04d}_hv`, the source's
original size; text `{stem}_hv_te`). The text file is written in its two passes (LLM, then CLIP merged in),
padding states included: musubi-tuner keeps the LLM's hidden states at the padded positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def _dtype_str(t: torch.Tensor) -> str:
    return str(t.dtype).split(".")[-1]


def latent_name(stem: str, original_size: tuple[int, int], window: tuple[int, int] | None = None) -> str:
    w, h = original_size
    if window is not None:
        stem = f"{stem}_{window[0]:05d}-{window[1]:03d}"
    return f"{stem}_{w:04d}x{h:04d}_hv.safetensors"


def write_latent(
    folder: Path,
    stem: str,
    original_size: tuple[int, int],
    latent: torch.Tensor,
    window: tuple[int, int] | None = None,
    version: str = "1.0.1",
) -> Path:
    """latent (C, F, H, W); window (start, frames) for a video."""
    _, f, h, w = latent.shape
    sd = {f"latents_{f}x{h}x{w}_{_dtype_str(latent)}": latent.detach().cpu()}
    meta = {
        "architecture": "hunyuan_video",
        "width": f"{original_size[0]}",
        "height": f"{original_size[1]}",
        "format_version": version,
    }
    if window is not None:
        meta["frame_count"] = f"{window[1]}"
    path = folder / latent_name(stem, original_size, window)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    return path


def write_text(
    folder: Path,
    stem: str,
    caption: str,
    llm: torch.Tensor,
    llm_mask: torch.Tensor,
    clip: torch.Tensor,
    clip_mask: torch.Tensor,
    version: str = "1.0.1",
) -> Path:
    """llm (256, D) with the states at padded positions, llm_mask (256,) int64, clip (768,), clip_mask (77,)."""
    path = folder / f"{stem}_hv_te.safetensors"
    meta = {"architecture": "hunyuan_video", "caption1": caption, "format_version": version}
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"llm_{_dtype_str(llm)}": llm, "llm_mask": llm_mask}, str(path), metadata=meta)  # pass 1
    with safe_open(str(path), framework="pt") as f:  # pass 2: merge into the existing file
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        old = dict(f.metadata())
    sd.update({f"clipL_{_dtype_str(clip)}": clip, "clipL_mask": clip_mask})
    old.pop("caption1", None)
    old.pop("format_version", None)
    save_file(sd, str(path), metadata={**meta, **old})
    return path


def batch_keys(latent_file: Path, text_file: Path) -> dict[str, tuple[int, ...]]:
    """The batch keys (and shapes) musubi-tuner's BucketBatchManager.__getitem__ makes of one item's files."""
    out = {}
    for file in (latent_file, text_file):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                content = key
                if not content.endswith("_mask"):
                    content = content.rsplit("_", 1)[0]  # the dtype (no float8 here)
                    if content.startswith("latents_"):
                        content = content.rsplit("_", 1)[0]  # the FxHxW
                out[content] = tuple(f.get_slice(key).get_shape())
    return out
