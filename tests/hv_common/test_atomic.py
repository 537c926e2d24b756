"""Crash-safe writes, proven by killing the writers at chosen points, deterministically: for every writer kind,
a child process rewrites its target (two distinguishable versions, alternating) and is killed at a chosen byte
of the file it writes, or before/after a chosen step of hv_common.atomic (fsync, each rename, the clean-up).
After each kill the target holds exactly the version the kill point implies (the old one, none for a state
folder set aside, or the new one), complete; then the next write removes every leftover.

How the children are stopped, without timing: tests/helpers/kill_harness.py.
"""

from __future__ import annotations

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
    is_temp_name,
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
