"""Which state `--resume` continues from, checked whole and against this run before anything of it loads.

`--resume DIR`: that state, or one `error:` line (exit 2) saying what is wrong with it.
`--resume auto`: the newest state of this run that is whole; each damaged one is named with what is wrong and
skipped (a warning), and the log says which state was used in the end. A whole state that does not fit this
run's options stops both: an older state of the same run would not fit either, and starting fresh over the
user's outputs is not ours to decide.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hv_common.errors import UserError
from training.resume.check import CheckedState, check_lora, check_payload
from training.resume.fit import check_fit
from training.saving import DamagedState, read_state_file, state_folders

if TYPE_CHECKING:
    from training.run import Run

logger = logging.getLogger(__name__)


def check_state(folder: Path, run: Run, payload: dict | None = None) -> CheckedState:
    """Read and check one state: DamagedState if it is not whole, StateMismatch if it does not fit the run."""
    if not folder.is_dir():
        raise DamagedState("not a folder")
    state = check_payload(folder, read_state_file(folder) if payload is None else payload)
    check_lora(state)
    check_fit(state, run)
    return state


def choose_state(run: Run) -> CheckedState | None:
    """The state to resume from, checked; None to start fresh (no --resume, or auto with no state yet)."""
    resume = run.config.saving.resume
    if not resume:
        return None
    if resume != "auto":
        folder = Path(resume)
        try:
            return check_state(folder, run)
        except DamagedState as e:
            raise UserError(f"--resume {folder}: damaged state: {e}") from None
        except UserError as e:
            raise UserError(f"--resume {folder}: {e}") from None
    return _newest_usable(run)


def _newest_usable(run: Run) -> CheckedState | None:
    folders = state_folders(run.output_dir, str(run.config.saving.output_name))
    if not folders:
        logger.info("--resume auto: no saved state in %s, starting fresh", run.output_dir)
        return None
    ordered, damaged = [], []
    for folder in folders:  # a first pass on the torch files alone (mapped, not read) orders them by step
        try:
            ordered.append((check_payload(folder, read_state_file(folder, mmap=True)).progress.step, folder))
        except DamagedState as e:  # its step is unknown: newer or older, it is no candidate
            damaged.append(_skip(folder, e, ""))
    for _, folder in sorted(ordered, key=lambda item: (-item[0], item[1].name)):
        try:
            state = check_state(folder, run)
        except DamagedState as e:
            damaged.append(_skip(folder, e))
            continue
        except UserError as e:
            raise UserError(f"--resume auto: newest whole state {folder}: {e}") from None
        if damaged:
            logger.warning(
                "--resume auto: using %s (skipped %d damaged: %s)", folder, len(damaged), ", ".join(damaged)
            )
        return state
    raise UserError(
        f"--resume auto: every state in {run.output_dir} is damaged ({', '.join(damaged)}; the warnings above say "
        "why); remove them to start fresh, or start from a LoRA with --network_weights"
    )


def _skip(folder: Path, problem: DamagedState, then: str = "; trying the next older one") -> str:
    logger.warning("--resume auto: skipping damaged state %s: %s%s", folder, problem, then)
    return folder.name
