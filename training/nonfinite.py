"""The NaN/Inf guard: a step whose loss or gradients are not finite leaves the weights alone, and a run that
keeps producing them stops, its last good weights saved, instead of training garbage for hours.

A skipped step still counts: the step counter, the lr schedule and the data position advance as for any
step (as with AMP's GradScaler), so max_train_steps, save schedules and resume positions do not move.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from hv_common.errors import UserError


class NonFiniteStop(UserError):
    """Too many non-finite steps in a row: the CLI prints it as one line and exits with code 2."""


@dataclass
class NonFiniteGuard:
    limit: int  # stop after this many skipped steps in a row (0: the guard is off)
    streak: int = 0  # skipped steps in a row so far
    files: list[str] = field(default_factory=list)  # cache files of the current step's micro-batches
    last_files: list[str] = field(default_factory=list)  # those of the last optimizer step

    def note_files(self, paths: Iterable[str] | None) -> None:
        """The cache files a micro-batch came from: a skipped step names them (a damaged file is findable)."""
        self.files.extend(p for p in paths or () if p not in self.files)

    def files_note(self, limit: int = 8) -> str:
        """'; its batch came from A, B' for the last step's log line, or '' when the batch carried no paths."""
        if not self.last_files:
            return ""
        more = f" and {len(self.last_files) - limit} more" if len(self.last_files) > limit else ""
        return f"; its batch came from {', '.join(self.last_files[:limit])}{more}"

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def record(self, skipped: bool) -> None:
        """After each optimizer step: whether it was skipped (the streak) and the files behind it."""
        self.last_files, self.files = self.files, []
        self.streak = self.streak + 1 if skipped else 0

    @property
    def exhausted(self) -> bool:
        return self.enabled and self.streak >= self.limit


def gradient_norm(parameters) -> torch.Tensor:
    """The total L2 norm of the gradients (inf or nan when any gradient is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads)
