"""Does a (whole) state fit this run? What changed since it was saved, named with what to do about it.

A state restores the optimizer's groups and learning rates, the schedule and the position in the data as they
were: a run that asks for something else (LoRA+ off, another optimizer, another rank, another dataset) would
either crash inside torch or silently train on with the state's settings instead of the new ones. So a change
stops the resume: restore the option, or start fresh from the state's LoRA with --network_weights.

What is compared: the network (module names, ranks, alphas: from the state's LoRA file itself), the optimizer
groups, their learning rates and the optimizer's settings (from the optimizer and scheduler states), and, from
the run's record that states carry since it exists, the optimizer class, the network module, the lr scheduler
and the batches per epoch. A state without the record is compared on what it has, and accepted with a note.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from hv_common.errors import UserError
from training.resume.check import CheckedState
from training.saving import STATE_LORA, DamagedState

if TYPE_CHECKING:
    from training.run import Run

logger = logging.getLogger(__name__)


class StateMismatch(UserError):
    """The state is whole but was saved by a run with other options: resuming it would not continue that run."""


def _optimizer_class(optimizer) -> type:
    return type(getattr(optimizer, "optimizer", optimizer))  # accelerate wraps it


def run_record(run: Run) -> dict:
    """What a state records of the run that saved it (plain containers: weights_only reads them)."""
    config = run.config
    cls = _optimizer_class(run.optimizer)
    return {
        "optimizer": f"{cls.__module__}.{cls.__qualname__}",
        "optimizer_type": config.optimizer.optimizer_type or "AdamW",
        "groups": [
            {"kind": g.get("kind", "lora"), "params": len(g["params"])} for g in run.optimizer.param_groups
        ],
        "network_module": config.network.network_module,
        "lr_scheduler": config.optimizer.lr_scheduler,
        "batches_per_epoch": len(run.batches),
    }


def check_fit(state: CheckedState, run: Run) -> None:
    """Raise StateMismatch naming every difference between the state and this run, with what to do."""
    changes: list[tuple[str, str]] = []  # (what changed, the option to restore)
    shape = _network_changes(state, run)
    changes += shape
    changes += _group_changes(state, run)
    changes += _optimizer_changes(state, run)
    record = state.record
    if record is not None:
        changes += _record_changes(record, run)
    elif state.progress.batch_in_epoch > len(run.batches):
        changes.append(
            (
                f"the state stopped at batch {state.progress.batch_in_epoch} of an epoch, this run has "
                f"{len(run.batches)} batches per epoch",
                "the dataset config, batch sizes and process count",
            )
        )
    if changes:
        what = "; ".join(c for c, _ in changes)
        restore = " and ".join(dict.fromkeys(o for _, o in changes))
        fresh = (
            "start fresh without the state (its LoRA does not fit this network either)"
            if shape
            else f"start fresh with --network_weights {state.folder / STATE_LORA} (keeps the LoRA, not the "
            "optimizer state or the position)"
        )
        raise StateMismatch(f"the state does not fit this run: {what}; restore {restore}, or {fresh}")
    _optimizer_tensors(state, run)
    if record is None:
        logger.info(
            "state %s has no run record (saved by an older version): its LoRA, optimizer groups and "
            "learning rates are checked; the optimizer type, lr scheduler and dataset size cannot be",
            state.folder,
        )


def _network_changes(state: CheckedState, run: Run) -> list[tuple[str, str]]:
    saved, expected = state.lora or {}, run.network.state_dict()
    modules = _modules(saved), _modules(expected)
    if modules[0] != modules[1] or saved.keys() != expected.keys():
        only_saved, only_run = sorted(modules[0] - modules[1]), sorted(modules[1] - modules[0])
        example = (
            f"{only_saved[0]} only in the state"
            if only_saved
            else f"{(only_run or ['?'])[0]} only in this run"
        )
        count = len(modules[0]), len(modules[1])
        return [
            (
                f"the LoRA wraps other modules ({count[0]} in the state, {count[1]} now; e.g. {example})",
                "the LoRA selection (--network_args exclude_patterns / include_patterns)",
            )
        ]
    out = []
    for key in sorted(saved):
        if saved[key].shape == expected[key].shape:
            continue
        module = key.split(".")[0]
        was, now = _rank(saved, module), _rank(expected, module)
        if was != now:
            out.append(
                (
                    f"LoRA rank {was} in the state, {now} now ({module})",
                    f"--network_dim {was} (or rank_patterns)",
                )
            )
        else:  # same rank, other features: the layer itself is another size
            out.append(
                (
                    f"{key} is {tuple(saved[key].shape)} in the state, {tuple(expected[key].shape)} now "
                    "(another DiT)",
                    "the --dit the state was trained on",
                )
            )
        break
    for key in sorted(saved):
        if key.endswith(".alpha") and not math.isclose(float(saved[key]), float(expected[key]), rel_tol=1e-6):
            alphas = float(saved[key]), float(expected[key])
            out.append(
                (
                    f"LoRA alpha {alphas[0]:g} in the state, {alphas[1]:g} now ({key.removesuffix('.alpha')})",
                    f"--network_alpha {alphas[0]:g} (or alpha_patterns)",
                )
            )
            break
    return out


def _rank(tensors: dict, module: str) -> int | None:
    down = tensors.get(f"{module}.lora_down.weight")
    return None if down is None or down.dim() < 1 else int(down.shape[0])


def _modules(tensors: dict) -> set[str]:
    return {key.split(".")[0] for key in tensors}  # lora_unet_<module>.lora_down.weight: the first part


def _group_changes(state: CheckedState, run: Run) -> list[tuple[str, str]]:
    """LoRA+ on/off or its ratio, and the learning rates."""
    saved = state.payload["optimizer"]["param_groups"]
    current = run.optimizer.param_groups
    kinds = [g.get("kind", "lora") for g in saved], [g.get("kind", "lora") for g in current]
    saved_lrs = state.payload["scheduler"].get("base_lrs") or [g.get("initial_lr", g["lr"]) for g in saved]
    lrs = (
        dict(zip(kinds[0], saved_lrs, strict=True)),
        dict(zip(kinds[1], run.scheduler.base_lrs, strict=True)),
    )
    out = []
    if kinds[0] != kinds[1]:
        if "lora_plus" in kinds[0] and "lora_plus" not in kinds[1]:
            ratio = _ratio(lrs[0])
            out.append(
                (
                    f"LoRA+ was on in the state (loraplus_lr_ratio={ratio:g}), it is off now",
                    f"--network_args loraplus_lr_ratio={ratio:g}",
                )
            )
        elif "lora_plus" in kinds[1] and "lora_plus" not in kinds[0]:
            out.append(
                ("LoRA+ was off in the state, it is on now", "--network_args without loraplus_lr_ratio")
            )
        else:
            out.append(
                (
                    f"the optimizer groups were {', '.join(kinds[0])}, now {', '.join(kinds[1])}",
                    "--network_module and --network_args",
                )
            )
        return out
    was, now = lrs[0].get("lora", saved_lrs[0]), lrs[1].get("lora", run.scheduler.base_lrs[0])
    if not math.isclose(was, now, rel_tol=1e-9):
        out.append((f"learning rate {was:g} in the state, {now:g} now", f"--learning_rate {was:g}"))
    if "lora_plus" in lrs[0]:
        ratios = _ratio(lrs[0]), _ratio(lrs[1])
        if not math.isclose(*ratios, rel_tol=1e-9):
            out.append(
                (
                    f"loraplus_lr_ratio {ratios[0]:g} in the state, {ratios[1]:g} now",
                    f"--network_args loraplus_lr_ratio={ratios[0]:g}",
                )
            )
    return out


def _ratio(lrs: dict[str, float]) -> float:
    return lrs["lora_plus"] / lrs["lora"] if lrs.get("lora") else math.inf


NOT_SETTINGS = {"params", "lr", "initial_lr", "kind"}  # what a group holds besides the optimizer's settings


def _optimizer_changes(state: CheckedState, run: Run) -> list[tuple[str, str]]:
    """Another optimizer class, or the same one with other settings (--optimizer_args): load_state_dict would
    put the state's settings back without a word."""
    saved, current = state.payload["optimizer"]["param_groups"], run.optimizer.param_groups
    record = state.record
    if record is None:
        other = _optimizer_kind_change(saved, current)
        if other:
            return other
    else:
        cls = _optimizer_class(run.optimizer)
        if record["optimizer"] != f"{cls.__module__}.{cls.__qualname__}":
            was, now = record["optimizer_type"], run.config.optimizer.optimizer_type or "AdamW"
            return [(f"optimizer {was} in the state, {now} now", f"--optimizer_type {was}")]
    out = {}
    for old, new in zip(saved, current, strict=False):  # groups that differ are named by _group_changes
        for key in sorted(set(old) & set(new) - NOT_SETTINGS):  # one side only: another torch's new setting
            if old[key] != new[key] and key not in out:
                out[key] = (
                    f"optimizer setting {key} {old[key]!r} in the state, {new[key]!r} now",
                    f"--optimizer_args {key}={old[key]!r}",
                )
    return list(out.values())


def _optimizer_kind_change(saved: list[dict], current: list[dict]) -> list[tuple[str, str]]:
    """Without a record: another optimizer class has other group settings (AdamW's betas, Adafactor's beta1).
    A setting only one side has is a torch upgrade that added it; settings on both sides are another class."""
    was, now = set(saved[0]) - NOT_SETTINGS, set(current[0]) - NOT_SETTINGS
    if was - now and now - was:
        names = sorted(was - now)
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return [
            (
                f"the state's optimizer has settings ({listed}) this run's optimizer lacks "
                "(another --optimizer_type)",
                "the --optimizer_type the state was saved with",
            )
        ]
    return []


def _record_changes(record: dict, run: Run) -> list[tuple[str, str]]:
    network_module, lr_scheduler = run.config.network.network_module, run.config.optimizer.lr_scheduler
    out = []
    if record["network_module"] != network_module:
        was = record["network_module"]
        out.append((f"network module {was} in the state, {network_module} now", f"--network_module {was}"))
    if record["lr_scheduler"] != lr_scheduler:
        was = record["lr_scheduler"]
        out.append((f"lr scheduler {was} in the state, {lr_scheduler} now", f"--lr_scheduler {was}"))
    if record["batches_per_epoch"] != len(run.batches):
        out.append(
            (
                f"{record['batches_per_epoch']} batches per epoch in the state, {len(run.batches)} now "
                "(another dataset, batch size or process count)",
                "the dataset config, batch sizes and process count",
            )
        )
    return out


def _optimizer_tensors(state: CheckedState, run: Run) -> None:
    """Each optimizer-state tensor of a param's rank has the param's shape (torch does not check; a step would
    fail mid-run). The network fits by now, so a mismatch is a damaged optimizer state."""
    saved = state.payload["optimizer"]
    sizes = (
        [len(g["params"]) for g in saved["param_groups"]],
        [len(g["params"]) for g in run.optimizer.param_groups],
    )
    if sizes[0] != sizes[1]:
        raise DamagedState(
            f"the optimizer state's groups hold {sizes[0]} tensors, its LoRA's make {sizes[1]}"
        )
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    order = [i for g in saved["param_groups"] for i in g["params"]]
    for index, param in zip(order, params, strict=True):
        for name, value in saved["state"].get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() == param.dim() and value.shape != param.shape:
                raise DamagedState(
                    f"optimizer.state[{index}].{name} has shape {tuple(value.shape)}, its LoRA tensor "
                    f"{tuple(param.shape)}"
                )
