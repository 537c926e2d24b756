"""Crash-safe writes, proven by killing the writers at chosen points, deterministically: for every writer kind,
a child process rewrites its target (two distinguishable versions, alternating) and is killed at a chosen byte
of the file it writes, or before/after a chosen step of hv_common.atomic (fsync, each rename, the clean-up).
After each kill the target holds exactly the version the kill point implies (the old one, none for a state
folder set aside, or the new one), complete; then the next write removes every leftover.

How the children are stopped, without timing: tests/helpers/kill_harness.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import select
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_harness import TARGETS, Context, latents, lora_version, make_context, tensors, write

from hv_common.atomic import (
    WriteError,
    atomic_dir,
    atomic_path,
    atomic_write,
    is_temp_name,
    remove_stale_temps,
    temp_pattern,
)

ROOT = Path(__file__).resolve().parents[2]
BYTE_KILLS = 6  # per kind: one seeded offset in each sixth of the file, and one more at its last byte
REPLY_TIMEOUT_S = 300.0  # a safety net for a hung helper, never reached by a working one


# ----------------------------------------------------------------------------- the readers


def _safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse all of it: a torn file fails here (header length, JSON, or tensor bytes out of range)."""
    from safetensors.torch import load

    (size,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    return load(data), meta


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _png_chunks_complete(data: bytes) -> None:
    """Whoever wrote the PNG: the signature, every chunk whole with its CRC, IEND last and at the end."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, kind = 8, b""
    while kind != b"IEND":
        assert pos + 12 <= len(data), "a PNG cut before its IEND chunk"
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        assert end <= len(data), f"a PNG cut inside its {kind!r} chunk"
        assert zlib.crc32(data[pos + 4 : end - 4]) == struct.unpack(">I", data[end - 4 : end])[0], "bad CRC"
        pos = end
    assert pos == len(data), "bytes after IEND"


class Expected:
    """The two versions of every kind, to compare what a reader finds against."""

    def __init__(self, ctx: Context, refs: Path) -> None:
        from hv_common.video_io import read_frames

        self.lora = [lora_version(ctx, v) for v in (0, 1)]
        self.images = []
        self.videos = []
        for v in (0, 1):
            write("plot", ctx, refs / f"loss{v}.png", v)
            write("video", ctx, refs / f"preview{v}.mp4", v)
            self.images.append(read_frames(refs / f"loss{v}.png"))
            self.videos.append(read_frames(refs / f"preview{v}.mp4"))

    def version(self, kind: str, target: Path) -> int | None:
        """Which version a reader finds at target, None when there is none; AssertionError when torn."""
        try:
            reader = getattr(self, f"_{kind}")
            return reader(target)
        except FileNotFoundError:
            return None

    def _lora(self, target: Path) -> int:
        tensors_, meta = _safetensors(target.read_bytes())
        v = int(meta["version"])
        assert _same(tensors_, self.lora[v]), f"{target}: tensors are not those of version {v}"
        return v

    def _state(self, target: Path) -> int | None:
        # Read both files through one folder handle: one rename of the folder is one consistent snapshot.
        fd = os.open(target, os.O_RDONLY)
        try:

            def opener(name: str, flags: int) -> int:
                return os.open(name, flags, dir_fd=fd)

            try:
                with open("lora.safetensors", "rb", opener=opener) as f:
                    lora = f.read()
                with open("train_state.pt", "rb", opener=opener) as f:
                    state = f.read()
            except FileNotFoundError as e:
                raise AssertionError(f"{target}: a state folder without {e.filename}") from None
        finally:
            os.close(fd)
        payload = torch.load(io.BytesIO(state), weights_only=True)
        v = payload["extra"]["version"]
        assert payload["progress"]["step"] == v + 1
        assert _same(_safetensors(lora)[0], self.lora[v]), f"{target}: the LoRA is not that of the state"
        return v

    def _cache(self, target: Path) -> int:
        from dataset.cache_files import CacheFileError, load_latents

        try:
            found = load_latents(target)
        except CacheFileError as e:
            if "missing" in str(e):
                raise FileNotFoundError(target) from None
            raise AssertionError(str(e)) from None
        matches = [v for v in (0, 1) if torch.equal(found, latents(v))]
        assert matches, f"{target}: latents that are neither version"
        return matches[0]

    def _stream(self, target: Path) -> int:
        found, meta = _safetensors(target.read_bytes())
        v = int(meta["version"])
        assert _same(found, tensors(v))
        return v

    def _plot(self, target: Path) -> int:
        from PIL import Image

        data = target.read_bytes()
        _png_chunks_complete(data)
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))[None]
        matches = [v for v in (0, 1) if np.array_equal(pixels, self.images[v])]
        assert matches, f"{target}: a PNG that is neither version"
        return matches[0]

    def _video(self, target: Path) -> int:
        import av

        data = target.read_bytes()  # one read: the file we decode is the file that was there
        with av.open(io.BytesIO(data)) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        matches = [v for v in (0, 1) if np.array_equal(decoded, self.videos[v])]
        assert matches, f"{target}: a video that is neither version ({decoded.shape})"
        return matches[0]


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> Expected:
    return Expected(make_context(), tmp_path_factory.mktemp("refs"))


# ----------------------------------------------------------------------------- the writers, killed


class Writers:
    """The helper process of tests/helpers/kill_harness.py: one call, one child writing once, how it ended."""

    def __init__(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "helpers")]),
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import kill_harness; kill_harness.zygote_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert self._reply() == "ready"

    def _reply(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], REPLY_TIMEOUT_S)
        assert ready, f"the writers' helper process did not answer in {REPLY_TIMEOUT_S:.0f} s"
        return self.proc.stdout.readline().strip()

    def run(
        self, kind: str, target: Path, version: int, kill: dict | None = None, record: Path | None = None
    ):
        request = {
            "kind": kind,
            "target": str(target),
            "version": version,
            "kill": kill,
            "record": str(record) if record else None,
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._reply())

    def write(self, kind: str, target: Path, version: int, record: Path | None = None) -> None:
        """A whole write in a fresh process, as the next run's first write is."""
        ended = self.run(kind, target, version, record=record)
        assert ended == {"signal": None, "exit": 0}, f"a {kind} write without a kill ended {ended}"

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=REPLY_TIMEOUT_S)


@pytest.fixture(scope="module")
def writers():
    w = Writers()
    yield w
    w.close()


def _leftovers(folder: Path) -> dict[str, int]:
    """Every file inside the temporaries in folder, with its size."""
    found = {}
    for temp in (p for p in folder.iterdir() if is_temp_name(p.name)):
        files = [temp] if temp.is_file() else [p for p in temp.rglob("*") if p.is_file()]
        found.update({str(p.relative_to(folder)): p.stat().st_size for p in files})
    return found


def _byte_offsets(size: int, rng: random.Random) -> list[int]:
    """One seeded offset in each of BYTE_KILLS equal parts of [0, size), and size - 1 (only the last byte lost)."""
    return [
        rng.randrange(size * i // BYTE_KILLS, size * (i + 1) // BYTE_KILLS) for i in range(BYTE_KILLS)
    ] + [size - 1]


def _visible_after(events: list[dict], done: int, old: int, new: int) -> int | None:
    """The version a reader must find once the first `done` steps of a write (of `new` over `old`) ran."""
    if any(e.get("into") for e in events[:done]):
        return new
    if any(e.get("aside") for e in events[:done]):
        return None  # a state folder renamed aside, the new one not yet in: no state of that name
    return old


def _check_kill(
    kind: str, kill: dict, ended: dict, out: Path, found: int | None, old: int, new: int, plan: list[dict]
) -> None:
    """What a kill at `kill`, during a write of `new` over `old`, must have left in `out`."""
    where = f"{kind}, v{new} over v{old}, killed at {kill}: "
    temps = [p.name for p in out.iterdir() if is_temp_name(p.name)]  # an emptied temporary folder counts
    if "byte" in kill:
        # The kernel ended it at the write that would pass byte N: that file holds exactly N bytes, or is an
        # empty safetensors temporary (its writer sizes the file first, so that is where it stopped).
        n, left = kill["byte"], _leftovers(out)
        assert ended["signal"] == "SIGXFSZ", where + f"not stopped at its byte: {ended}"
        assert found == old, where + f"the reader found {found}"
        assert left and max(left.values()) <= n, where + f"temporaries {left}"
        assert n in left.values() or any(Path(p).name.startswith(".tmp") and s == 0 for p, s in left.items())
    else:
        done = kill.get("before", kill.get("after", -1) + 1)  # how many steps of the plan ran
        assert ended["signal"] == "SIGKILL", where + f"not killed: {ended}"
        assert found == _visible_after(plan, done, old, new), where + f"the reader found {found}"
        assert bool(temps) == (done < len(plan)), where + f"temporaries {temps}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TARGETS))
def test_sigkill_never_leaves_a_torn_file(kind, writers, expected, tmp_path):
    out = tmp_path / "out"
    target = out / TARGETS[kind]
    writers.write(kind, target, 0)
    plans = {}
    for v in (1, 0):  # each written over the other: the steps (and sizes) a killed write of v goes through
        writers.write(kind, target, v, record=tmp_path / f"steps{v}.json")
        plans[v] = json.loads((tmp_path / f"steps{v}.json").read_text())
    n_steps = len(plans[0])
    assert n_steps == len(plans[1]) and plans[0][-1]["op"] == "rmtree"  # a write ends removing its temporary
    rng = random.Random(f"kill-{kind}")
    size = {v: max(e["size"] for e in plans[v] if "size" in e) for v in (0, 1)}  # the largest file written
    offsets = {v: _byte_offsets(size[v], rng) for v in (0, 1)}
    kills = [("byte", i) for i in range(BYTE_KILLS + 1)] + [("before", k) for k in range(n_steps)]
    old, bytes_hit = 0, []
    for how, i in [*kills, ("after", n_steps - 1)]:
        new = 1 - old
        kill = {"byte": offsets[new][i]} if how == "byte" else {how: i}
        bytes_hit += [f"{kill['byte']}/{size[new]}"] if how == "byte" else []
        ended = writers.run(kind, target, new, kill)
        try:
            found = expected.version(kind, target)
        except AssertionError as e:
            raise AssertionError(f"{kind}, v{new} over v{old}, killed at {kill}: a torn file: {e}") from None
        _check_kill(kind, kill, ended, out, found, old, new, plans[new])
        writers.write(kind, target, new)  # the next run's write: complete, and every leftover removed
        assert expected.version(kind, target) == new
        assert [p.name for p in out.iterdir()] == [target.name], f"{kind}: a temporary left after {kill}"
        old = new
    print(f"{kind}: killed at bytes {', '.join(bytes_hit)} and at {n_steps + 1} steps")


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
