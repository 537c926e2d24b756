"""What a run leaves behind and shows: LoRA files and states on schedule, the LoRA file's metadata, the
trackers' logs, sample previews and the validation loss."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from hv_common.dtypes import TABLE
from hv_common.option_types import positive_int
from hv_common.options import option

# musubi-tuner's --save_precision values: float (float32) and the short names fp32, fp16, bf16
SAVE_PRECISIONS = ("float", *(d.options[-1] for d in TABLE if d.options))


def resume_target(text: str) -> str:
    """`auto` (the newest state under --output_dir) or a state directory that exists now, not hours later."""
    if text == "auto":
        return text
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is no directory; give a saved state directory or 'auto'")
    return text


def resolution_text(text: str) -> str:
    """--metadata_reso as musubi-tuner reads it: `W,H` or one number for a square (kept as given)."""
    parts = text.split(",")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(parts) not in (1, 2) or len(sizes) != len(parts) or min(sizes, default=0) <= 0:
        raise argparse.ArgumentTypeError(f"expected W,H or one size in pixels (e.g. 1280,720), got {text!r}")
    return text


@dataclass(frozen=True)
class SavingOptions:
    """saving and resuming"""

    output_dir: str | None = option(None, "where LoRA files and states go")
    output_name: str | None = option(None, "file name stem of the LoRA files")
    save_every_n_steps: int | None = option(None, "save a LoRA every N steps", type=positive_int)
    save_last_n_steps: int | None = option(None, "keep the LoRAs of the last N steps", type=positive_int)
    save_last_n_steps_state: int | None = option(
        None, "keep the states of the last N steps", type=positive_int
    )
    save_every_n_epochs: int | None = option(None, "save a LoRA every N epochs", type=positive_int)
    save_last_n_epochs: int | None = option(None, "keep the LoRAs of the last N epochs", type=positive_int)
    save_last_n_epochs_state: int | None = option(
        None, "keep the states of the last N epochs", type=positive_int
    )
    save_state: bool = option(False, "save the full state with each LoRA")
    save_state_on_train_end: bool = option(False, "save the full state at the end")
    resume: str | None = option(None, "continue from a saved state", type=resume_target, metavar="DIR|auto")
    save_precision: str | None = option(
        None,
        "dtype of saved LoRA weights: float and fp32 are float32 (unset: float32, as trained)",
        choices=SAVE_PRECISIONS,
    )
    save_comfyui_layout: bool = option(
        False,
        "also save each LoRA in the `other` layout, which ComfyUI loads whole (MLP and modulation modules "
        "too), as <name>.comfyui.safetensors beside it",
    )

    @property
    def save_dtype(self) -> str | None:
        """The dtype --save_precision asks for, as a name parse_dtype takes; None: as trained (float32)."""
        return "float32" if self.save_precision == "float" else self.save_precision

    @property
    def saves_final_state(self) -> bool:
        return self.save_state or self.save_state_on_train_end


@dataclass(frozen=True)
class MetadataOptions:
    """metadata of the LoRA file"""

    no_metadata: bool = option(False, "write no ss_* metadata")
    training_comment: str | None = option(None, "stored as ss_training_comment")
    metadata_title: str | None = option(None, "modelspec title")
    metadata_author: str | None = option(None, "modelspec author")
    metadata_description: str | None = option(None, "modelspec description")
    metadata_license: str | None = option(None, "modelspec license")
    metadata_tags: str | None = option(None, "modelspec tags, comma-separated")
    metadata_reso: str | None = option(
        None, "modelspec resolution, W,H or one size (unset: 1280,720)", type=resolution_text, metavar="W,H"
    )
    metadata_arch: str | None = option(
        None, "modelspec architecture, written as <arch>/lora (unset: hunyuan-video)"
    )

    @property
    def resolution(self) -> str:
        """modelspec.resolution, `WxH`: musubi-tuner's placeholder 1280x720 unless --metadata_reso says."""
        sizes = (self.metadata_reso or "1280,720").split(",")
        width, height = int(sizes[0]), int(sizes[-1])
        return f"{width}x{height}"


@dataclass(frozen=True)
class LoggingOptions:
    """logging"""

    logging_dir: str | None = option(
        None, "tracker logs: each run writes in its own folder <logging_dir>/<log_prefix><YYYYmmddHHMMSS>"
    )
    log_with: str | None = option(
        None, "trackers (unset: tensorboard with --logging_dir)", choices=("tensorboard", "wandb", "all")
    )
    log_prefix: str | None = option(None, "prefix of each run's log folder name (before its start time)")
    log_tracker_name: str | None = option(None, "tracker (project) name")
    log_tracker_config: str | None = option(
        None,
        "TOML file of keyword arguments per tracker ([wandb] ..., [tensorboard] ...)",
        metavar="FILE.toml",
    )
    wandb_run_name: str | None = option(None, "name of this run in wandb")
    wandb_api_key: str | None = option(None, "log in to wandb with this key before the run starts")
    log_config: bool = option(
        False, "log the training options to the trackers (paths, keys and tokens left out)"
    )

    @property
    def trackers(self) -> str | None:
        """musubi-tuner's rule: --logging_dir without --log_with logs to TensorBoard."""
        return self.log_with or ("tensorboard" if self.logging_dir else None)

    def run_log_dir(self, started: float) -> Path | None:
        """musubi-tuner's layout: one folder per run under --logging_dir, named by --log_prefix and the local
        start time, so runs sharing a --logging_dir never mix their event files."""
        if self.logging_dir is None:
            return None
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(started))
        return Path(self.logging_dir) / f"{self.log_prefix or ''}{stamp}"


NO_HUB = "this trainer runs with no network access to model hubs; upload or download the files yourself"


@dataclass(frozen=True)
class HubOptions:
    """Hugging Face Hub upload and resume: musubi-tuner's options, known by name and refused"""

    huggingface_repo_id: str | None = option(None, refused=NO_HUB, section="saving and resuming")
    huggingface_repo_type: str | None = option(None, refused=NO_HUB, section="saving and resuming")
    huggingface_path_in_repo: str | None = option(None, refused=NO_HUB, section="saving and resuming")
    huggingface_token: str | None = option(None, refused=NO_HUB, section="saving and resuming")
    huggingface_repo_visibility: str | None = option(None, refused=NO_HUB, section="saving and resuming")
    save_state_to_huggingface: bool = option(False, refused=NO_HUB, section="saving and resuming")
    resume_from_huggingface: bool = option(False, refused=NO_HUB, section="saving and resuming")
    async_upload: bool = option(False, refused=NO_HUB, section="saving and resuming")


@dataclass(frozen=True)
class SamplingOptions:
    """sample previews"""

    sample_prompts: str | None = option(None, "prompt file (--w --h --f --d --s --g --fs per line)")
    sample_every_n_steps: int | None = option(None, "sample every N steps", type=positive_int)
    sample_every_n_epochs: int | None = option(None, "sample every N epochs", type=positive_int)
    sample_at_first: bool = option(False, "sample before the first step")


@dataclass(frozen=True)
class ValidationOptions:
    """validation"""

    validate_every_n_steps: int | None = option(None, "validation loss every N steps", type=positive_int)
    validate_every_n_epochs: int | None = option(None, "validation loss every N epochs", type=positive_int)

    @property
    def enabled(self) -> bool:
        return bool(self.validate_every_n_steps or self.validate_every_n_epochs)
