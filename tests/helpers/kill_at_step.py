"""Test helper: hv_train_network.py, SIGKILLed right after its N-th optimizer step (the weights moved, the step
not yet counted or saved): a crash mid-run at a chosen step, never at a moment that depends on the machine's
speed. Usage: python tests/helpers/kill_at_step.py N ARGS... (ARGS as for hv_train_network.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hv_train_network  # noqa: E402
import training.trainer as trainer  # noqa: E402


def main() -> int:
    kill_at, argv = int(sys.argv[1]), sys.argv[2:]
    real, calls = trainer.optimizer_step, [0]

    def optimizer_step(run, micro_losses):
        outcome = real(run, micro_losses)
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return outcome

    trainer.optimizer_step = optimizer_step  # train() looks it up in its module at each step
    return hv_train_network.main(argv)


if __name__ == "__main__":
    sys.exit(main())
