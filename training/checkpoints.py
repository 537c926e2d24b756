"""What a run writes: LoRA files on schedule (with pruning) and full training states for an exact resume.

A state is a folder: the LoRA weights (safetensors) and one torch file of plain containers (optimizer and
scheduler state, counters, RNG states) read back with weights_only=True. It is written under a temporary name
and renamed when complete, so `--resume auto` never sees half a state.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hv_common.atomic import atomic_dir

from .errors import UserError

STATE_FILE = "train_state.pt"
STATE_LORA = "lora.safetensors"


@dataclass
class Progress:
    """Where the run is: global optimizer step, epoch, and the next batch index within the epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def lora_file_name(output_name: str, step: int | None = None, epoch: int | None = None) -> str:
    if step is not None:
        return f"{output_name}-step{step:08d}.safetensors"
    if epoch is not None:
        return f"{output_name}-{epoch:06d}.safetensors"
    return f"{output_name}.safetensors"


def prune(output_dir: Path, output_name: str, kind: str, keep: int | None, state: bool = False) -> None:
    """Keep only the newest `keep` step (or epoch) files, or states, of this run."""
    if not keep:
        return
    suffix = "-state" if state else ".safetensors"
    if kind == "step":
        pattern = re.compile(rf"^{re.escape(output_name)}-step(\d{{8}}){re.escape(suffix)}$")
    else:
        pattern = re.compile(rf"^{re.escape(output_name)}-(?:epoch)?(\d{{6}}){re.escape(suffix)}$")
    found = sorted((int(m.group(1)), p) for p in output_dir.iterdir() if (m := pattern.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


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
    folder: Path, network, optimizer, scheduler, progress: Progress, extra: dict | None = None
) -> None:
    """Write a complete state folder atomically (hv_common.atomic.atomic_dir: temp folder, fsync, rename)."""
    payload = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": _rng_state(),
        "extra": extra or {},
    }
    with atomic_dir(folder) as tmp:
        network.save_weights(str(tmp / STATE_LORA))
        # a file object: torch.save then fails with the OSError in its context (a full disk keeps its errno)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(payload, f)


def find_latest_state(output_dir: Path, output_name: str) -> Path | None:
    """The newest complete state of this run: temp folders (`.<name>.*.tmp`), other runs' states (another
    output_name that starts with this one) and folders without both files never match."""
    if not output_dir.is_dir():
        return None
    name = re.compile(rf"^{re.escape(output_name)}-(?:step|epoch)?\d+-state$")
    best: tuple[int, Path] | None = None
    for path in output_dir.iterdir():
        if not (name.match(path.name) and (path / STATE_FILE).is_file() and (path / STATE_LORA).is_file()):
            continue
        try:
            step = int(
                torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")["progress"]["step"]
            )
        except Exception:  # a damaged state is skipped, never resumed from
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return best[1] if best else None


def load_state(folder: Path, network, optimizer, scheduler) -> tuple[Progress, dict]:
    """Restore a state into the network, optimizer, scheduler and RNGs; return its progress and its extra."""
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise UserError(f"--resume {folder}: not a training state (no {STATE_FILE})")
    try:
        payload = torch.load(state_file, weights_only=True, map_location="cpu")
    except Exception as e:
        raise UserError(f"--resume {folder}: unreadable state ({' '.join(str(e).split())[:160]})") from None
    network.load_weights(str(folder / STATE_LORA))
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_state(payload["rng"])
    return Progress(**payload["progress"]), dict(payload.get("extra", {}))
