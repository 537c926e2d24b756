"""The memory estimate from the trainer's options, and its one-screen report (--estimate_memory, and the log
line at the start of a GPU run). The arithmetic itself is memory/estimate.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hv_common.errors import UserError
from memory.estimate import (
    COMMON_CARDS_GB,
    DTYPE_BYTES,
    LoRAInfo,
    MemoryEstimate,
    Settings,
    Workload,
    dit_shapes,
    estimate,
    gib,
    lora_info,
    max_blocks_to_swap,
    smallest_blocks_to_swap,
)
from training.options import TrainConfig
from training.precision import requested_mixed_precision

if TYPE_CHECKING:
    from hunyuan_model.config import DiTConfig

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- from the command line


def memory_settings(config: TrainConfig) -> Settings:
    mixed = requested_mixed_precision(config.training.mixed_precision)  # unset: accelerate's, as training's
    dit_dtype = config.model.dit_dtype or "bfloat16"  # the trainer's default on a GPU
    weight = DTYPE_BYTES[dit_dtype.lower()]
    memory = config.memory
    return Settings(
        weight_bytes=weight,
        act_bytes=2 if mixed in ("bf16", "fp16") else weight,
        autocast=mixed in ("bf16", "fp16"),
        fp8_base=memory.fp8_base,
        fp8_scaled=memory.fp8_scaled,
        blocks_to_swap=memory.blocks_to_swap or 0,
        gradient_checkpointing=memory.gradient_checkpointing,
        checkpoint_cpu_offload=memory.gradient_checkpointing_cpu_offload,
        split_attn=memory.split_attn,
        optimizer=config.optimizer.optimizer_type or "AdamW",
        lora_bytes=2 if config.training.full_bf16 or config.training.full_fp16 else 4,
    )


def workload_from_dataset_config(path: str) -> Workload:
    """The bucket of the dataset config with the most tokens per batch (batch size x tokens)."""
    from dataset.buckets import bucket_resolutions
    from dataset.config import VideoDatasetConfig, load_dataset_config
    from dataset.frames import round_down_to_vae_frames

    best: Workload | None = None
    for d in load_dataset_config(path, check_media=False).datasets:
        sizes = bucket_resolutions(d.resolution) if d.enable_bucket else [tuple(d.resolution)]
        frames = 1
        if isinstance(d, VideoDatasetConfig):
            full = d.frame_extraction == "full"
            frames = round_down_to_vae_frames(d.max_frames) if full else max(d.target_frames)
        for w, h in sizes:
            work = Workload(w, h, frames, d.batch_size)
            if best is None or _load(work) > _load(best):
                best = work
    assert best is not None  # load_dataset_config refuses a config without datasets
    return best


def _load(work: Workload) -> int:
    return work.batch_size * (work.image_tokens() + work.text_tokens)


def workload_from_config(config: TrainConfig) -> Workload:
    override = config.modes.estimate_resolution
    if override:
        return Workload(*override)
    if not config.data.dataset_config:
        raise UserError(
            "--estimate_memory needs --dataset_config or --estimate_resolution W H FRAMES [BATCH]"
        )
    return workload_from_dataset_config(config.data.dataset_config)


@dataclass(frozen=True)
class Inputs:
    """Everything an estimate is computed from, gathered once."""

    config: DiTConfig
    shapes: dict
    lora: LoRAInfo
    work: Workload
    settings: Settings
    notes: tuple[str, ...] = ()


def inputs_from_config(config: TrainConfig) -> Inputs:
    from training.list_targets import meta_model

    work = workload_from_config(config)
    dit = config.model.dit
    notes: tuple[str, ...] = ()
    if dit is not None and not Path(dit).exists():  # planning before the download is a use of its own
        notes = (f"--dit {dit} does not exist (yet): the official 720p architecture is assumed",)
        dit = None
    model = meta_model(dit)  # headers only (or the 720p preset)
    lora = lora_info(model, config.network)
    return Inputs(model.config, dit_shapes(model), lora, work, memory_settings(config), notes)


def estimate_from_config(config: TrainConfig) -> tuple[MemoryEstimate, Inputs]:
    i = inputs_from_config(config)
    return estimate(i.config, i.shapes, i.lora, i.work, i.settings), i


# ---------------------------------------------------------------- printing


def format_estimate(est: MemoryEstimate, i: Inputs, budget_gb: float | None = None) -> str:
    s, w, cfg = i.settings, i.work, i.config
    weights = {1: "fp8", 2: "16-bit", 4: "fp32"}[s.weight_bytes]
    fp8 = " + fp8 block Linears" + (" (scaled)" if s.fp8_scaled else "") if s.fp8_base or s.fp8_scaled else ""
    ckpt = "gradient checkpointing" + (" (inputs on CPU)" if s.checkpoint_cpu_offload else "")
    lines = [
        "GPU memory ESTIMATE for one training step (arithmetic on shapes, not a measurement)",
        f"  DiT {cfg.name}: {weights} weights{fp8}, --blocks_to_swap {s.blocks_to_swap}",
        f"  batch {w.describe()}: {w.latent_frames} latent frames, {w.image_tokens(cfg.patch_size)} image + "
        f"{w.text_tokens} text tokens per sample; {ckpt if s.gradient_checkpointing else 'no checkpointing'}",
        f"  {'component':<40}{'GiB':>8}",
    ]
    lines += [f"  {name:<40}{gib(v):>8.2f}" for name, v in est.components.items() if v]
    lines.append(f"  {'total (estimate)':<40}{gib(est.total):>8.2f}")
    lines += [f"  note: {n}" for n in (*est.notes, *i.notes)]
    if budget_gb is not None:
        lines.append(_fits_line(i, budget_gb))
    else:
        lines.append(
            "  smallest --blocks_to_swap by card (estimate): "
            + ", ".join(f"{gb} GB: {_swap_text(i, gb)}" for gb in COMMON_CARDS_GB)
        )
    return "\n".join(lines)


def _swap_text(i: Inputs, budget_gb: float) -> str:
    n = smallest_blocks_to_swap(i.config, i.shapes, i.lora, i.work, i.settings, budget_gb)
    return "no" if n is None else str(n)


def _fits_line(i: Inputs, budget_gb: float) -> str:
    n = smallest_blocks_to_swap(i.config, i.shapes, i.lora, i.work, i.settings, budget_gb)
    if n is not None:
        return f"fits in {budget_gb:g} GB with --blocks_to_swap {n} (estimate)"
    s = i.settings
    tips = [
        t
        for t, off in (
            ("--fp8_base", not (s.fp8_base or s.fp8_scaled)),
            ("--gradient_checkpointing", not s.gradient_checkpointing),
            (
                "--gradient_checkpointing_cpu_offload",
                s.gradient_checkpointing and not s.checkpoint_cpu_offload,
            ),
        )
        if off
    ]
    tips.append("fewer frames or a smaller resolution/batch")
    return (
        f"does not fit in {budget_gb:g} GB even with --blocks_to_swap {max_blocks_to_swap(i.config)} "
        f"(estimate); try {', '.join(tips)}"
    )


def render(config: TrainConfig) -> str:
    est, i = estimate_from_config(config)
    return format_estimate(est, i, config.modes.vram_budget_gb)


def log_estimate(config: TrainConfig) -> None:
    """The same one-screen estimate at the start of training; never stops a run."""
    try:
        text = render(config)
    except ValueError:
        return  # a user error (a bad --dit, ...): the loading that follows reports it, once
    except Exception as e:  # noqa: BLE001 - an estimate must not cost the user their run
        logger.warning("memory estimate unavailable: %s", " ".join(str(e).split()))
        return
    logger.info("%s", text)
