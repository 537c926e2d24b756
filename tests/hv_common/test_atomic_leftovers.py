"""hv_common/atomic.py without killing anyone: a live writer's temporary is never cleaned up, a folder is replaced
whole, killed writers' leftovers are invisible to every reader, and a failed write names the target, never the
temporary (the kills: test_atomic.py)."""

from __future__ import annotations

import errno

import pytest
import torch
from kill_harness import make_context

from hv_common.atomic import (
    WriteError,
    atomic_dir,
    atomic_path,
    atomic_write,
    remove_stale_temps,
    temp_pattern,
)

# ----------------------------------------------------------------------------- temporaries and readers


def test_a_live_writers_temporary_is_never_cleaned_up(tmp_path):
    target = tmp_path / "x.bin"
    stale = tmp_path / ".x.bin.abcd1234.tmp"
    stale.write_bytes(b"torn")
    other = tmp_path / ".x.bin.other.efgh5678.tmp"  # another target's temporary ("x.bin.other")
    other.write_bytes(b"torn")
    with atomic_path(target) as live:
        live.write_bytes(b"new")
        assert remove_stale_temps(target) == [stale]  # ours is locked by this live writer: kept
        assert live.exists() and not stale.exists()
    assert target.read_bytes() == b"new" and not live.exists() and other.exists()
    assert temp_pattern("x.bin").match(stale.name) and not temp_pattern("x.bin").match(other.name)


def test_atomic_dir_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "state"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]  # the old folder set aside is gone
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("3")
        raise RuntimeError("a bug while writing")
    assert (target / "a").read_text() == "2" and [p.name for p in tmp_path.iterdir()] == ["state"]


def test_killed_leftovers_are_invisible_to_the_readers(tmp_path):
    """A state temp folder with a newer complete state, a torn cache temp, a DiT shard temp: never read."""
    from dataset.cache_files import write_latent_cache, write_text_cache
    from dataset.cache_names import text_cache_name
    from dataset.train_dataset import discover_cached_items
    from hunyuan_model.checkpoint import safetensors_files
    from training.saving import STATE_FILE, Progress, find_latest_state, save_state

    ctx = make_context()
    out = tmp_path / "out"
    save_state(out / "tiny-step00000005-state", ctx.network, ctx.optimizer, ctx.scheduler, Progress(step=5))
    save_state(
        out / "tiny_v2-step00000020-state", ctx.network, ctx.optimizer, ctx.scheduler, Progress(step=20)
    )
    leftover = out / ".tiny-step00000009-state.k2j4h6g8.tmp"  # killed just before its rename: complete inside
    save_state(leftover, ctx.network, ctx.optimizer, ctx.scheduler, Progress(step=9))
    half = out / "tiny-step00000007-state"  # a folder with the state file only
    half.mkdir()
    (half / STATE_FILE).write_bytes((out / "tiny-step00000005-state" / STATE_FILE).read_bytes())
    assert find_latest_state(out, "tiny") == out / "tiny-step00000005-state"

    cache = tmp_path / "cache"
    name = "item_0064x0064_hv.safetensors"
    write_latent_cache(cache / name, torch.zeros(16, 1, 8, 8), (64, 64), None, {})
    write_text_cache(
        cache / text_cache_name("item"), torch.zeros(4, 8), torch.ones(4), torch.zeros(8), "c", {}
    )
    (cache / ".other_0064x0064_hv.safetensors.a1b2c3d4.tmp").write_bytes(b"\x10\x00torn")
    assert [i.latent_path.name for i in discover_cached_items(cache)] == [name]

    dit = tmp_path / "dit"
    atomic_write(dit / "model.safetensors", lambda p: p.write_bytes((cache / name).read_bytes()))
    (dit / ".model-00002.safetensors.zz99yy88.tmp").write_bytes(b"torn")
    assert safetensors_files(dit) == [dit / "model.safetensors"]


# ----------------------------------------------------------------------------- write errors


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    ("fail", "code"),
    [
        # safetensors' Rust writer: the errno only in the text of its own exception type
        (
            lambda: _raise(
                __import__("safetensors").SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
            ),
            errno.ENOSPC,
        ),
        # torch.save into a file object: a RuntimeError whose context is the OSError
        (lambda: _raise_in_context(_enospc(), RuntimeError("unexpected pos 704 vs 598")), errno.ENOSPC),
        (lambda: _raise(OSError(errno.EDQUOT, "Disk quota exceeded")), errno.EDQUOT),
        (
            lambda: _raise(PermissionError(errno.EACCES, "Permission denied", "/x/.t.bin.abcd1234.tmp")),
            errno.EACCES,
        ),
    ],
)
def test_write_failures_name_the_target_never_the_temporary(tmp_path, fail, code):
    target = tmp_path / "t.bin"
    target.write_bytes(b"before")
    with pytest.raises(WriteError) as info:
        atomic_write(target, lambda tmp: (tmp.write_bytes(b"half"), fail()))
    assert info.value.errno == code and info.value.filename == str(target)
    assert target.read_bytes() == b"before" and [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(KeyError):
        atomic_write(tmp_path / "t.bin", lambda tmp: _raise(KeyError("a bug")))
    other = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.bin"))
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "t.bin", lambda tmp: _raise(other))
    assert info.value is other and not isinstance(info.value, WriteError)
    assert list(tmp_path.iterdir()) == []


def _raise(e: BaseException):
    raise e


def _raise_in_context(inner: BaseException, outer: BaseException):
    try:
        raise inner
    except type(inner):
        raise outer  # noqa: B904 (what torch does: the OSError only as __context__)
