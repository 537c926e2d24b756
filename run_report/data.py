"""What the run report shows, gathered from the run (plain data; run_report/page.py renders it).

Each function reads defensively (getattr): a custom --network_module or a future option must never make the
report, which is written at every save, stop a run.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hv_common.atomic import is_temp_name
from hv_common.labels import STATE_SUFFIX, lora_file_name
from hv_common.options import option_defaults, option_values


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int
    frames: int
    windows: list[str]  # "item_key" (an image) or "item_key frames 0-16"
    media: int  # distinct source files


@dataclass(frozen=True)
class DatasetInfo:
    cache_directory: str
    batch_size: int
    num_repeats: int
    latent_files: int
    buckets: list[Bucket]


def command_line() -> list[str]:
    """How this process was started (under `accelerate launch`: the trainer script and its arguments)."""
    return list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def options(config: Any) -> list[tuple[str, object, bool]]:
    """(name, value, differs from the default) for every option of a configuration of option groups (the
    trainer's TrainConfig), the resolved values (config file + command line)."""
    defaults = option_defaults(type(config))
    return [(name, value, value != defaults[name]) for name, value in option_values(config).items()]


def datasets(summary: list[dict]) -> list[DatasetInfo]:
    """Each training dataset's cached items by bucket, from the cache file names (no tensor is read)."""
    from dataset.cache_names import LATENT_SUFFIX, parse_latent_cache_name

    out = []
    for entry in summary:
        folder = Path(entry["cache_directory"])
        groups: dict[tuple[int, int, int], list[str]] = defaultdict(list)
        media: dict[tuple[int, int, int], set[str]] = defaultdict(set)
        files = sorted(folder.glob(f"*{LATENT_SUFFIX}")) if folder.is_dir() else []
        for path in files:
            video = parse_latent_cache_name(path.name, is_video=True)
            name = video or parse_latent_cache_name(path.name, is_video=False)
            if name is None:
                continue
            start, frames = (video.start_frame or 0, video.frame_count or 1) if video else (0, 1)
            key = (name.width, name.height, frames)
            window = f" frames {start}-{start + frames - 1}" if video else ""
            groups[key].append(name.item_key + window)
            media[key].add(name.item_key)
        buckets = [Bucket(w, h, f, groups[(w, h, f)], len(media[(w, h, f)])) for w, h, f in sorted(groups)]
        out.append(
            DatasetInfo(
                str(folder),
                int(entry.get("batch_size", 1)),
                int(entry.get("num_repeats", 1)),
                len(files),
                buckets,
            )
        )
    return out


def lora_targets(network) -> list[tuple[str, int, int, int, float]]:
    """(module, in, out, rank, alpha) per wrapped module."""
    names = getattr(network, "module_names", None) or []
    loras = getattr(network, "loras", None) or []
    rows = []
    for name, lora in zip(names, loras, strict=False):
        alpha = getattr(lora, "alpha", float("nan"))
        rows.append(
            (
                name,
                int(getattr(lora, "in_features", 0)),
                int(getattr(lora, "out_features", 0)),
                int(getattr(lora, "lora_dim", 0)),
                float(alpha),
            )
        )
    return rows


def param_groups(optimizer) -> list[tuple[str, float, int, int]]:
    """(kind, current lr, tensors, parameters) per optimizer parameter group."""
    return [
        (str(g.get("kind", "lora")), float(g["lr"]), len(g["params"]), sum(p.numel() for p in g["params"]))
        for g in optimizer.param_groups
    ]


def step_times(seconds: list[float]) -> list[tuple[str, str]]:
    """The first step (with warm-up) apart; the median of the rest is the step rate (saves and previews make
    their steps slower: the mean includes them)."""
    if not seconds:
        return [("time per step", "no step yet")]
    rows = [("first step (with warm-up)", f"{seconds[0]:.3f} s")]
    rest = seconds[1:]
    if rest:
        median = statistics.median(rest)
        rows += [
            ("time per step (median)", f"{median:.3f} s ({1 / median:.2f} steps/s)" if median > 0 else "0 s"),
            ("time per step (mean, with saves and previews)", f"{statistics.fmean(rest):.3f} s"),
            ("slowest step", f"{max(rest):.3f} s"),
        ]
    return rows


def peak_memory(device) -> list[tuple[str, str]]:
    rows = []
    if getattr(device, "type", None) == "cuda":
        import torch

        rows.append(("GPU memory allocated (peak)", size_text(torch.cuda.max_memory_allocated(device))))
        rows.append(("GPU memory reserved (peak)", size_text(torch.cuda.max_memory_reserved(device))))
    try:
        import resource
    except ImportError:  # Windows
        return rows
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows.append(("process RSS (peak)", size_text(peak if sys.platform == "darwin" else peak * 1024)))
    return rows


def written_files(output_dir: Path, output_name: str, logging_dir: str | None) -> list[tuple[Path, str, int]]:
    """(path, kind, bytes) of what this run writes: its files in output_dir, the previews, the logs."""
    rows = []
    try:
        entries = sorted(output_dir.iterdir())
    except OSError:
        entries = []
    for path in entries:
        if is_temp_name(path.name) or not path.name.startswith(output_name):
            continue
        rows.append((path, _kind(path, output_name), _bytes(path)))
    sample = output_dir / "sample"
    if sample.is_dir():
        rows.append((sample, "previews", _bytes(sample)))
    if logging_dir and Path(logging_dir).is_dir():
        rows.append((Path(logging_dir), "tracker logs", _bytes(Path(logging_dir))))
    return rows


def _kind(path: Path, output_name: str) -> str:
    if path.is_dir():
        return "training state (--resume)" if path.name.endswith(STATE_SUFFIX) else "folder"
    if path.name.endswith(".comfyui.safetensors"):  # training/saving.py's COMFYUI_SUFFIX
        return "LoRA, ComfyUI's layout (--save_comfyui_layout)"
    if path.suffix == ".safetensors":
        return "LoRA (final)" if path.name == lora_file_name(output_name) else "LoRA (intermediate)"
    return {".png": "plot", ".html": "this report"}.get(path.suffix, "file")


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile (a pruned state)
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def size_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
