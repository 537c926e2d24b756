"""What every command shares: logging to stderr, and user errors as one line with exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence


class _StderrHandler(logging.StreamHandler):
    """Always the current sys.stderr (tests swap it); never stdout, which JSON output owns."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def run_command(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command's body; a user error becomes `error: <one line>` on stderr and exit code 2."""
    setup_logging()
    try:
        return run(argv)
    except ValueError as e:  # every user error type is a ValueError; their modules load only when one happens
        from .errors import user_error_types

        if not isinstance(e, user_error_types()):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
