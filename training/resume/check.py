"""Is a saved state whole and well-formed? Checked before any of it loads, each problem one line.

A state is read back with weights_only=True, which refuses code but not nonsense: a missing key, a string where
a count belongs, a negative step, an optimizer state with a param group fewer than its LoRA. Loaded as they are,
they end in a traceback (or worse, a run that silently continues from the wrong place). Every check here only
reads the state; whether it fits this run's options is training/resume/fit.py's question.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import torch

from training.saving import RECORD_KEY, STATE_FILE, STATE_LORA, DamagedState, Progress

# a billion optimizer steps (or epochs, or batches in one) is no real run: the counter is damaged
MAX_COUNT = 10**9
REQUIRED = {"optimizer": dict, "scheduler": dict, "progress": dict, "rng": dict}


@dataclass
class CheckedState:
    """A state that passed every check: what load_state needs, already read."""

    folder: Path
    payload: dict
    progress: Progress
    lora: dict[str, torch.Tensor] | None = None  # read by check_lora

    @property
    def record(self) -> dict | None:
        return self.payload.get(RECORD_KEY)


def _kind(value) -> str:
    return (
        f"{value!r} ({type(value).__name__})"
        if isinstance(value, (int, float, str))
        else type(value).__name__
    )


def _count(value, where: str, limit: int = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise DamagedState(f"{STATE_FILE}: {where} is {_kind(value)}, expected an integer from 0 to {limit}")
    return value


def _rate(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise DamagedState(f"{STATE_FILE}: {where} is {_kind(value)}, expected a finite number >= 0")
    return float(value)


def _typed(payload: dict, key: str, kind: type, where: str | None = None):
    if key not in payload:
        raise DamagedState(f"{STATE_FILE}: no {where or key!r} in it")
    value = payload[key]
    if not isinstance(value, kind):
        raise DamagedState(f"{STATE_FILE}: {where or key} is {_kind(value)}, expected a {kind.__name__}")
    return value


def check_payload(folder: Path, payload: dict) -> CheckedState:
    """Everything train_state.pt must be, on its own: keys, types, counters and their agreement."""
    for key, kind in REQUIRED.items():
        _typed(payload, key, kind)
    progress = _progress(payload["progress"])
    sizes = _optimizer_groups(payload["optimizer"])
    _scheduler(payload["scheduler"], progress, len(sizes))
    _rng(payload["rng"])
    _extra(payload.get("extra", {}))
    _record(payload.get(RECORD_KEY), payload["optimizer"]["param_groups"], progress)
    return CheckedState(folder, payload, progress)


def _progress(raw: dict) -> Progress:
    names = ("step", "epoch", "batch_in_epoch")
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        raise DamagedState(f"{STATE_FILE}: progress has unknown key {unknown[0]!r}")
    counts = [_count(_typed(raw, n, object, f"progress.{n}"), f"progress.{n}") for n in names]
    return Progress(*counts)


def _optimizer_groups(raw: dict) -> list[int]:
    """The optimizer state's param groups, each a list of distinct indices 0..n-1 over all groups; their sizes."""
    groups = _typed(raw, "param_groups", list, "optimizer.param_groups")
    state = _typed(raw, "state", dict, "optimizer.state")
    if not groups:
        raise DamagedState(f"{STATE_FILE}: optimizer.param_groups is empty")
    seen: list[int] = []
    for i, group in enumerate(groups):
        where = f"optimizer.param_groups[{i}]"
        if not isinstance(group, dict):
            raise DamagedState(f"{STATE_FILE}: {where} is {_kind(group)}, expected a dict")
        params = _typed(group, "params", list, f"{where}.params")
        seen += [_count(p, f"{where}.params item") for p in params]
        _rate(_typed(group, "lr", object, f"{where}.lr"), f"{where}.lr")
    if sorted(seen) != list(range(len(seen))):
        raise DamagedState(
            f"{STATE_FILE}: optimizer.param_groups do not number their tensors 0..{len(seen) - 1}"
        )
    for index, value in state.items():
        if index not in range(len(seen)) or not isinstance(value, dict):
            raise DamagedState(f"{STATE_FILE}: optimizer.state has an entry {_kind(index)} for no tensor")
    return [len(g["params"]) for g in groups]


def _scheduler(raw: dict, progress: Progress, groups: int) -> None:
    last = _count(_typed(raw, "last_epoch", object, "scheduler.last_epoch"), "scheduler.last_epoch")
    if last != progress.step:  # the schedule steps once per optimizer step, skipped steps included
        raise DamagedState(
            f"{STATE_FILE}: progress.step is {progress.step} but the lr schedule is at step {last}"
        )
    for key in ("base_lrs", "_last_lr"):
        if key not in raw:
            continue
        rates = _typed(raw, key, list, f"scheduler.{key}")
        if len(rates) != groups:
            raise DamagedState(
                f"{STATE_FILE}: scheduler.{key} has {len(rates)} rates for {groups} optimizer param groups"
            )
        for i, rate in enumerate(rates):
            _rate(rate, f"scheduler.{key}[{i}]")
    lambdas = raw.get("lr_lambdas", [])
    if not isinstance(lambdas, list) or any(fn is not None for fn in lambdas):
        raise DamagedState(
            f"{STATE_FILE}: scheduler.lr_lambdas holds values (the schedule is the run's, not data)"
        )
    # load_state_dict sets every key as an attribute of the scheduler: none may replace a method or the optimizer
    # (other unknown keys are bookkeeping of another torch version, harmless)
    bad = sorted((k for k in raw if not _plain_scheduler_key(k)), key=str)
    if bad:
        raise DamagedState(
            f"{STATE_FILE}: scheduler has the key {bad[0]!r}, which names no state of a schedule"
        )


def _plain_scheduler_key(key) -> bool:
    if not isinstance(key, str) or key.startswith("__") or key == "optimizer":
        return False
    default = getattr(torch.optim.lr_scheduler.LambdaLR, key, None)
    return not (callable(default) or isinstance(default, property))


def _rng(raw: dict) -> None:
    state = raw.get("python")
    try:  # a private generator: a state that does not fit leaves the global one alone
        if not isinstance(state, tuple):
            raise TypeError(f"expected a tuple, got {type(state).__name__}")
        random.Random().setstate(state)
    except (TypeError, ValueError) as e:
        raise DamagedState(f"{STATE_FILE}: rng.python is not a random state ({e})") from None
    expected = torch.get_rng_state()
    state = raw.get("torch")
    if not (
        isinstance(state, torch.Tensor) and state.dtype == expected.dtype and state.shape == expected.shape
    ):
        raise DamagedState(f"{STATE_FILE}: rng.torch is not a torch RNG state")
    cuda = raw.get("cuda", [])
    if not (isinstance(cuda, (list, tuple)) and all(isinstance(s, torch.Tensor) for s in cuda)):
        raise DamagedState(f"{STATE_FILE}: rng.cuda is not a list of CUDA RNG states")


def _extra(raw) -> None:
    if not isinstance(raw, dict):
        raise DamagedState(f"{STATE_FILE}: extra is {_kind(raw)}, expected a dict")
    losses = raw.get("losses", [])
    if not (isinstance(losses, list) and all(isinstance(x, Real) for x in losses)):
        raise DamagedState(f"{STATE_FILE}: extra.losses is not a list of numbers")
    validations = raw.get("validations", [])
    if not (isinstance(validations, list) and all(isinstance(v, dict) for v in validations)):
        raise DamagedState(f"{STATE_FILE}: extra.validations is not a list of dicts")


def _record(raw, groups: list[dict], progress: Progress) -> None:
    """The run's record (absent in older states): its types, and its groups are the optimizer state's."""
    if raw is None:
        return
    where = f"{RECORD_KEY}"
    if not isinstance(raw, dict):
        raise DamagedState(f"{STATE_FILE}: {where} is {_kind(raw)}, expected a dict")
    for key in ("optimizer", "optimizer_type", "network_module", "lr_scheduler"):
        _typed(raw, key, str, f"{where}.{key}")
    per_epoch = _count(
        _typed(raw, "batches_per_epoch", object, f"{where}.batches_per_epoch"), f"{where}.batches_per_epoch"
    )
    if progress.batch_in_epoch > per_epoch:
        raise DamagedState(
            f"{STATE_FILE}: progress.batch_in_epoch is {progress.batch_in_epoch}, past the {per_epoch} batches "
            "of an epoch"
        )
    recorded = _typed(raw, "groups", list, f"{where}.groups")
    actual = [{"kind": g.get("kind", "lora"), "params": len(g["params"])} for g in groups]
    if recorded != actual:
        raise DamagedState(
            f"{STATE_FILE}: the optimizer state has {_layout(actual)}, the run recorded {_layout(recorded)}"
        )


def _layout(groups: list) -> str:
    parts = [f"{g.get('kind')} ({g.get('params')} tensors)" if isinstance(g, dict) else "?" for g in groups]
    return f"{len(groups)} param group{'s' if len(groups) != 1 else ''}: {', '.join(parts)}"


def check_lora(state: CheckedState) -> dict[str, torch.Tensor]:
    """The state's LoRA: it reads, its values are finite, and the optimizer state covers its tensors."""
    from lora_files.errors import LoRAFileError
    from lora_files.io import check_lora_tensors

    path = state.folder / STATE_LORA
    if not path.is_file():
        raise DamagedState(f"no {STATE_LORA} in it (an incomplete state)")
    import safetensors.torch

    try:
        tensors = safetensors.torch.load_file(str(path))
        check_lora_tensors(path, tensors)
    except LoRAFileError as e:
        raise DamagedState(str(e).replace(f"LoRA file {path}", STATE_LORA)) from None
    except Exception as e:  # safetensors' own error types for torn or foreign files
        raise DamagedState(
            f"{STATE_LORA} is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
        ) from None
    weights = sum(1 for k in tensors if not k.endswith(".alpha"))
    covered = sum(len(g["params"]) for g in state.payload["optimizer"]["param_groups"])
    if covered != weights:
        raise DamagedState(
            f"the optimizer state in {STATE_FILE} covers {covered} tensors, its {STATE_LORA} has {weights} "
            "(a param group missing?)"
        )
    state.lora = tensors
    return tensors
