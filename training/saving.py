"""What a run writes: LoRA files on schedule (with pruning; with --save_comfyui_layout each also in the `other`
layout ComfyUI loads whole) and full training states for an exact resume.

A state is a folder: the LoRA weights (safetensors) and one torch file of plain containers (optimizer and
scheduler state, counters, RNG states, and a record of the run that wrote it) read back with weights_only=True.
It is written under a temporary name and renamed when complete, so `--resume auto` never sees half a state.
Whether a state is whole and fits the run is training/resume/check.py's and training/resume/fit.py's job.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hv_common.atomic import atomic_dir
from hv_common.errors import UserError
from hv_common.labels import LORA_SUFFIX, saved_pattern, state_folder_pattern
from lora_files.io import save_lora_file, save_network
from lora_files.layouts import read_layout, to_other

STATE_FILE = "train_state.pt"
STATE_LORA = "lora.safetensors"
RECORD_KEY = "run"  # the run's record (state_fit.run_record); states written before it lack the key
COMFYUI_SUFFIX = ".comfyui.safetensors"  # --save_comfyui_layout's copy of <name>.safetensors


class DamagedState(UserError):
    """A state that is not whole or not well-formed: `--resume DIR` stops on it, `--resume auto` skips it."""


@dataclass
class Progress:
    """Where the run is: global optimizer step, epoch, and the next batch index within the epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def prune(output_dir: Path, output_name: str, kind: str, keep: int | None, state: bool = False) -> None:
    """Keep only the newest `keep` step (or epoch) files, or states, of this run (hv_common/labels.py)."""
    if not keep:
        return
    pattern = saved_pattern(output_name, kind, state)
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := pattern.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        if not state:
            comfyui_path(path).unlink(missing_ok=True)


def comfyui_path(path: Path) -> Path:
    """Where --save_comfyui_layout writes the `other`-layout copy of the LoRA file `path`."""
    return path.with_name(path.name.removesuffix(LORA_SUFFIX) + COMFYUI_SUFFIX)


def save_lora_files(
    network, path: Path, dtype: torch.dtype | None, metadata: dict[str, str], comfyui: bool
) -> list[Path]:
    """The LoRA file (`dtype`: None keeps the network's), and with `comfyui` its copy in the `other` layout
    (diffusion_model.<module>.lora_A/B.weight, alpha folded in fp32 before the cast; LoHa / LoKr keys as they
    are). Every module is kept: ComfyUI maps these names to all of the DiT's Linears, where it maps the
    default layout's lora_unet_ names only in part (docs/interop.md). Returns the files written."""
    save_network(network, path, dtype=dtype, metadata=metadata)
    if not comfyui:
        return [path]
    state = {k: v.detach().float() for k, v in network.state_dict().items()}
    weights, _ = read_layout(state, source=f"the network saved as {path}")
    tensors = {k: v.to(dtype) if dtype is not None else v for k, v in to_other(weights).items()}
    save_lora_file(comfyui_path(path), tensors, metadata)
    return [path, comfyui_path(path)]


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    folder: Path,
    network,
    optimizer,
    scheduler,
    progress: Progress,
    extra: dict | None = None,
    record: dict | None = None,
) -> None:
    """Write a complete state folder atomically (hv_common.atomic.atomic_dir: temp folder, fsync, rename).

    `record` describes the run (optimizer, groups, scheduler, dataset size) so a resume can tell what changed."""
    payload = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": _rng_state(),
        "extra": extra or {},
    }
    if record is not None:
        payload[RECORD_KEY] = record
    with atomic_dir(folder) as tmp:
        save_network(network, str(tmp / STATE_LORA))
        # a file object: torch.save then fails with the OSError in its context (a full disk keeps its errno)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(payload, f)


def state_folders(output_dir: Path, output_name: str) -> list[Path]:
    """Every folder named as a state of this run, whole or not. Temp folders (`.<name>.*.tmp`) and other runs'
    states (another output_name that starts with this one) never match."""
    if not output_dir.is_dir():
        return []
    name = state_folder_pattern(output_name)
    return sorted(p for p in output_dir.iterdir() if name.match(p.name) and p.is_dir())


def read_state_file(folder: Path, mmap: bool = False) -> dict:
    """The state's torch file, unpickled with weights_only=True (plain containers and tensors, nothing else).

    mmap: tensors stay in the file (a scan of many states reads only what it looks at)."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise DamagedState(f"no {STATE_FILE} in it (not a training state, or an incomplete one)")
    try:
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
        except Exception:
            if not mmap:
                raise
            # a file system without mmap, or an old serialization format: read it; a torn file fails here too
            payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torn, truncated, foreign or refused by weights_only: all the same to the user
        raise DamagedState(f"{STATE_FILE} is unreadable ({_load_error(e)})") from None
    if not isinstance(payload, dict):
        raise DamagedState(f"{STATE_FILE} holds a {type(payload).__name__}, not a state's dict")
    return payload


def _load_error(e: Exception) -> str:
    """torch.load's reason, short: its messages run to paragraphs of advice (with terminal escapes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split()))
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:  # weights_only met a type a state never holds: a foreign or tampered file
        return f"it holds {refused.group(1)}, a type weights_only=True refuses to load"
    return text.split(". ")[0][:160]


def find_latest_state(output_dir: Path, output_name: str) -> Path | None:
    """The folder of the newest state whose torch file reads (by its recorded step); None if there is none.
    Damaged ones are skipped here: training/resume/pick.py's `--resume auto` also says which and why."""
    best: tuple[int, Path] | None = None
    for path in state_folders(output_dir, output_name):
        if not (path / STATE_LORA).is_file():
            continue
        try:
            step = int(read_state_file(path, mmap=True)["progress"]["step"])
        except Exception:
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return best[1] if best else None


def load_state(payload: dict, lora: dict, network, optimizer, scheduler) -> tuple[Progress, dict]:
    """Restore a checked state (state_check.check_state) into the network, optimizer, scheduler and RNGs;
    return its progress and its extra."""
    network.load_state_dict(lora, strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"])
    return Progress(**payload["progress"]), dict(payload.get("extra", {}))
