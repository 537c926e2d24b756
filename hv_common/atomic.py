"""Crash-safe writes: write in a temporary folder beside the target, fsync, then rename over the target.

A reader sees either the old target or the complete new one, never a torn file. Temporary folders are named
`.<target name>.<random>.tmp` (hidden, and no reader's pattern matches them). A killed writer leaves its
temporary folder behind; the next successful write of the same target removes it. A live writer holds an
exclusive flock on its temporary folder, so that cleanup never takes that of a writer that is still running.

Errors while writing become a WriteError (an OSError) naming the target, never the temporary: a full disk
raises WriteError(ENOSPC, ..., target) even where the library underneath hid the errno in its own exception
type (safetensors' SafetensorError; torch.save's RuntimeError, whose context holds it when given a file object).
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; stale temporaries are then left for the user
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """Writing `filename` failed; `errno` says why (ENOSPC: the disk is full). The target was not changed."""


# "The disk cannot take this file": full, over quota, or over the file system's (or ulimit's) size limit.
NO_SPACE_ERRNOS = frozenset(
    getattr(errno_codes, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno_codes, name)
)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkdtemp makes 0700, safetensors' own temporary file 0600: a finished target gets a plain open()/mkdir()'s mode.
_FILE_MODE = 0o666 & ~_current_umask()
_DIR_MODE = 0o777 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `target`, on error it is removed.

    The path has the target's own name (writers that guess the format from the suffix still can), inside a
    hidden temporary folder next to the target: whatever the writer itself puts beside it (safetensors >= 0.7
    writes its own `.tmpXXXXXX` and renames it) is removed with that folder, even after a kill.
    """
    target = Path(target)
    with _temp_folder(target) as folder:
        tmp = folder / target.name
        with _as_write_error(target):
            yield tmp
            os.chmod(tmp, _FILE_MODE)  # after writing: the writer may have replaced the file it created
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    _remove_known_stale_temps(target)


def atomic_write(target: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) (what it returns is ignored), then move the finished file over target."""
    with atomic_path(target) as tmp:
        write(tmp)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder `target`, on error it is removed.

    An old `target` is renamed aside before the new one is renamed in, and deleted after: a crash never
    leaves a half-deleted folder under the real name (at worst no folder of that name, and the old one aside).
    """
    target = Path(target)
    with _temp_folder(target) as tmp, _as_write_error(target):
        yield tmp
        os.chmod(tmp, _DIR_MODE)
        _fsync_tree(tmp)
        old = tmp.with_name(tmp.name.removesuffix(TEMP_SUFFIX) + ".old" + TEMP_SUFFIX)
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    _remove_known_stale_temps(target)  # what killed writers left


@contextlib.contextmanager
def _temp_folder(target: Path) -> Iterator[Path]:
    """A new `.<target name>.<random>.tmp` folder beside target, flock'ed while we live; removed after."""
    with _as_write_error(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent))
    fd = os.open(folder, os.O_RDONLY)
    try:
        _lock(fd)  # a folder's inode never changes under us: the lock holds whatever the writer does inside
        yield folder
    finally:
        os.close(fd)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)


def temp_pattern(name: str) -> re.Pattern[str]:
    """The names of the temporaries (and set-aside old folders) of a target called `name`."""
    return re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]+(?:\.old)?{re.escape(TEMP_SUFFIX)}$")


def is_temp_name(name: str) -> bool:
    """True for any name this module gives a temporary."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Delete the temporaries of `target` that no live writer holds (left by a killed run); return them."""
    target = Path(target)
    if fcntl is None:
        return []
    pattern = temp_pattern(target.name)
    removed = []
    with contextlib.suppress(OSError):
        for path in target.parent.iterdir():
            if pattern.match(path.name) and _remove_if_unlocked(path):
                removed.append(path)
    return removed


# Temporaries seen in each folder, listed once per process: a cache folder of 10,000 files must not be listed
# again on every write (that made caching quadratic). Killed writers' leftovers exist before a run starts.
_temps_seen: dict[Path, set[str]] = {}


def _remove_known_stale_temps(target: Path) -> None:
    """After a write of `target`: remove the temporaries of target that killed writers left (no live writer
    holds them), from one listing of the folder per process."""
    if fcntl is None:
        return
    folder = target.parent
    names = _temps_seen.get(folder)
    if names is None:
        try:
            names = {e.name for e in os.scandir(folder) if is_temp_name(e.name)}
        except OSError:
            return
        _temps_seen[folder] = names
    pattern = temp_pattern(target.name)
    for name in [n for n in names if pattern.match(n)]:
        path = folder / name
        if _remove_if_unlocked(path) or not path.exists():
            names.discard(name)


def _remove_if_unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # gone already, or not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live writer holds it (or this file system has no flock: leave it)
    else:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return not path.exists()
    finally:
        os.close(fd)


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):  # no flock on this file system: cleanup then never removes it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust's io::Error prints (safetensors)


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, one in its cause/context chain, or an errno in its text."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        if m := _OS_ERROR_IN_TEXT.search(str(e)):
            code = int(m.group(1))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def _as_write_error(target: Path) -> Iterator[None]:
    """Re-raise an I/O failure of writing `target` as WriteError(errno, strerror, target); others pass."""
    try:
        yield
    except Exception as exc:
        found = _os_error_in(exc)
        # found.errno is never None (_os_error_in returns only errors with a code); the test narrows its type
        if found is None or found.errno is None or not _about_target(found.filename, target):
            raise  # a bug, or an error about another file (an input being read): unchanged
        raise WriteError(found.errno, found.strerror or os.strerror(found.errno), str(target)) from exc


def _about_target(filename: object, target: Path) -> bool:
    """No file named, the target's folder, or a path inside the target's temporaries."""
    if filename is None:
        return True
    path = Path(os.fsdecode(filename)) if isinstance(filename, (str, bytes, os.PathLike)) else None
    if path is None:
        return False
    if path == target or path == target.parent:
        return True
    return any(temp_pattern(target.name).match(p.name) for p in (path, *path.parents))


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every platform can open a directory
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
