"""What every command shares: logging to stderr, and user errors as one line with exit code 2."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from hv_common.errors import UserError


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a user error is `error: <one line>` on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())} (see --help)\n")


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
        code = run(argv)
        sys.stdout.flush()  # a reader that went away shows here, not as "Exception ignored" at exit
        return code
    except BrokenPipeError:  # `... --list_lora_targets json | head -c 10`: the reader has all it wanted
        return closed_stdout()
    except UserError as e:  # every package's user error derives from it (hv_common/errors.py)
        _close_progress_bars()  # a bad file met mid-run: the error starts a line of its own
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder we may not write: the user's to fix; other I/O errors trace
        message = disk_error_message(e)
        if message is None:
            raise
        _close_progress_bars()  # a save fails mid-run: end the bar's line, so ours starts a line of its own
        print(f"error: {message}", file=sys.stderr)
        return 2


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool that wrote into a closed pipe


def closed_stdout() -> int:
    """End quietly, as Unix tools do when their reader closes the pipe: no traceback, exit code 141."""
    try:  # Python flushes stdout again at exit: let that write go nowhere instead of warning on stderr
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no file (a test's capture): nothing to redirect
        pass
    return SIGPIPE_EXIT


MAX_ERROR_CHARS = 2000  # a hostile file can make a message of megabytes: one line stays one screen


def _one_line(message: str) -> str:
    line = " ".join(message.split())
    return (
        line
        if len(line) <= MAX_ERROR_CHARS
        else f"{line[: MAX_ERROR_CHARS - 30]} ... ({len(line)} characters)"
    )


def _close_progress_bars() -> None:
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


def disk_error_message(e: OSError) -> str | None:
    """One line for a full disk / quota / size limit, or a write to a read-only or forbidden place; else None."""
    from hv_common.atomic import NO_SPACE_ERRNOS, WriteError

    path = os.fsdecode(e.filename) if e.filename is not None else None
    reason = e.strerror or os.strerror(e.errno or 0)
    if e.errno in NO_SPACE_ERRNOS:
        where = f" while writing {path}" if path else ""
        kept = "; no partial file was left and earlier saves are intact" if isinstance(e, WriteError) else ""
        return f"{reason[:1].lower()}{reason[1:]}{where}{kept} (free some space, or write elsewhere)"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and path:
        verb = "write" if isinstance(e, WriteError) or e.errno == errno.EROFS else "access"
        return f"cannot {verb} {path}: {reason}"
    return None
