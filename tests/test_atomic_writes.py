"""Crash-safe writes, proven by killing the writers: every writer kind is SIGKILLed at seeded random moments
while it rewrites its target again and again (two distinguishable versions, alternating); after each kill, and
all along from a reader polling during the writes, the target is absent or a complete copy of one version.

The writers run in children forked from one helper process that imported everything once (`_zygote`): a kill
and a fresh writer cost milliseconds, not a Python start-up. The helper sets one torch thread before it forks.
"""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from hv_common.atomic import (
    WriteError,
    atomic_dir,
    atomic_path,
    atomic_write,
    is_temp_name,
    remove_stale_temps,
    temp_pattern,
)

ROOT = Path(__file__).resolve().parents[1]
KILLS_PER_KIND = 8
MAX_DELAY_S = 0.15


# ----------------------------------------------------------------------------- the writers and their readers


@dataclass
class Context:
    """What the writers need, built the same way in the helper process and in the test (for the expected)."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object


def make_context() -> Context:
    sys.path.insert(0, str(ROOT / "tests"))
    from lora_testing import tiny_model, tiny_network

    model = tiny_model()
    network = tiny_network(model, dim=16)
    network.apply_to(model)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return Context(network, optimizer, scheduler)


def _lora_version(ctx: Context, v: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in ctx.network.parameters():
            p.fill_(v + 1.0)
    return {k: t.detach().clone() for k, t in ctx.network.state_dict().items()}


def _tensors(v: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(v)
    return {f"t{i}": torch.randn(256, 1024, generator=g) for i in range(4)}  # 4 MiB: kills land mid-write


def _latents(v: int) -> torch.Tensor:
    return torch.randn(16, 5, 24, 24, generator=torch.Generator().manual_seed(100 + v))


def _losses(v: int) -> list[float]:
    return [1.0 / (1 + i) + 0.1 * v * (i % 3) for i in range(200)]


def _frames(v: int) -> np.ndarray:
    rng = np.random.default_rng(v)
    return rng.integers(0, 255, size=(9, 64, 96, 3), dtype=np.uint8)


def write(kind: str, ctx: Context, target: Path, v: int) -> None:
    """Write version v of `kind` at target (for a video, target is the .mp4 and the stem is derived)."""
    if kind == "lora":
        _lora_version(ctx, v)
        ctx.network.save_weights(str(target), metadata={"version": str(v)})
    elif kind == "state":
        from training.checkpoints import Progress, save_state

        _lora_version(ctx, v)
        save_state(target, ctx.network, ctx.optimizer, ctx.scheduler, Progress(step=v + 1), {"version": v})
    elif kind == "cache":
        from dataset.cache_files import LATENT_FORMAT, write_cache

        write_cache(target, {"latents": _latents(v)}, {"format_version": LATENT_FORMAT, "version": str(v)})
    elif kind == "stream":
        from hv_common.safetensors_stream import write_safetensors_streaming

        tensors = _tensors(v)
        specs = [(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()]
        write_safetensors_streaming(target, specs, tensors.__getitem__, {"version": str(v)})
    elif kind == "plot":
        from training.loss_plot import Curves, write_loss_plot

        write_loss_plot(target, Curves(loss=list(enumerate(_losses(v), 1)), title=f"version {v}"))
    elif kind == "video":
        from hv_common.video_io import write_media

        write_media(_frames(v), target.with_suffix(""))
    else:
        raise ValueError(kind)


TARGETS = {"lora": "net.safetensors", "state": "net-step00000001-state", "cache": "item_0096x0096_hv.safetensors",
           "stream": "merged.safetensors", "plot": "loss.png", "video": "preview.mp4"}  # fmt: skip


def _safetensors(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse all of it: a torn file fails here (header length, JSON, or tensor bytes out of range)."""
    import json
    import struct

    from safetensors.torch import load

    (size,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    return load(data), meta


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Expected:
    """The two versions of every kind, to compare what a reader finds against."""

    def __init__(self, ctx: Context, refs: Path) -> None:
        from hv_common.video_io import read_frames

        self.lora = [_lora_version(ctx, v) for v in (0, 1)]
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
        tensors, meta = _safetensors(target.read_bytes())
        v = int(meta["version"])
        assert _same(tensors, self.lora[v]), f"{target}: tensors are not those of version {v}"
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
            except FileNotFoundError:
                # Only an old folder already renamed aside (and being deleted) may lose files.
                replaced = os.stat(target).st_ino != os.fstat(fd).st_ino if target.exists() else True
                assert replaced, f"{target}: a file is missing from the live state folder"
                return None
        finally:
            os.close(fd)
        payload = torch.load(io.BytesIO(state), weights_only=True)
        v = payload["extra"]["version"]
        assert payload["progress"]["step"] == v + 1
        assert _same(_safetensors(lora)[0], self.lora[v]), f"{target}: the LoRA is not that of the state"
        return v

    def _cache(self, target: Path) -> int:
        from dataset.cache_files import LATENT_FORMAT, CacheFileError, load_cache

        try:
            tensors = load_cache(target, LATENT_FORMAT, ("latents",))
        except CacheFileError as e:
            if "missing" in str(e):
                raise FileNotFoundError(target) from None
            raise AssertionError(str(e)) from None
        matches = [v for v in (0, 1) if torch.equal(tensors["latents"], _latents(v))]  # one read only
        assert matches, f"{target}: latents that are neither version"
        return matches[0]

    def _stream(self, target: Path) -> int:
        tensors, meta = _safetensors(target.read_bytes())
        v = int(meta["version"])
        assert _same(tensors, _tensors(v))
        return v

    def _plot(self, target: Path) -> int:
        from PIL import Image

        with Image.open(io.BytesIO(target.read_bytes())) as image:
            pixels = np.asarray(image.convert("RGB"))[None]  # decodes every byte: a torn PNG raises
        matches = [v for v in (0, 1) if np.array_equal(pixels, self.images[v])]
        assert matches, f"{target}: a PNG that is neither version"
        return matches[0]

    def _video(self, target: Path) -> int:
        import av

        data = target.read_bytes()  # one read: the file we decode is the file that was there
        with av.open(io.BytesIO(data)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        matches = [v for v in (0, 1) if np.array_equal(frames, self.videos[v])]
        assert matches, f"{target}: a video that is neither version ({frames.shape})"
        return matches[0]


# ----------------------------------------------------------------------------- the helper process that forks


def zygote_main() -> None:
    """Read `kind target` lines; fork a child that rewrites target (versions 0, 1, 0, ...) until killed."""
    torch.set_num_threads(1)  # no OpenMP pool exists when we fork: children may compute safely
    ctx = make_context()
    import av  # noqa: F401  (imported once, before the forks)
    from PIL import Image  # noqa: F401

    import dataset.cache_files  # noqa: F401
    import hv_common.safetensors_stream  # noqa: F401
    import hv_common.video_io  # noqa: F401
    import training.checkpoints  # noqa: F401
    import training.loss_plot  # noqa: F401
    from training.loss_plot import Curves, render_curves

    render_curves(Curves())  # matplotlib and its fonts loaded once, before the forks

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        kind, target = line.split()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            v = 0
            while True:
                write(kind, ctx, Path(target), v)
                v = 1 - v
        print(pid, flush=True)


@pytest.fixture(scope="module")
def zygote():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen([sys.executable, "-c", "import test_atomic_writes as t; t.zygote_main()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_temp_name(p.name))


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> tuple[Context, Expected]:
    ctx = make_context()
    return ctx, Expected(ctx, tmp_path_factory.mktemp("refs"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TARGETS))
def test_sigkill_never_leaves_a_torn_file(kind, zygote, expected, tmp_path):
    ctx, exp = expected
    target = tmp_path / TARGETS[kind]
    rng = random.Random(f"kill-{kind}")
    seen, killed_mid_write, polls = set(), 0, 0
    for i in range(KILLS_PER_KIND):
        zygote.stdin.write(f"{kind} {target}\n")
        zygote.stdin.flush()
        pid = int(zygote.stdout.readline())
        if i == 0:  # let the first writer finish one write: the later kills then overwrite a real file
            _wait_for(target)
        deadline = time.monotonic() + rng.uniform(0.0, MAX_DELAY_S)
        while time.monotonic() < deadline:  # a reader polling while the writer writes
            seen.add(exp.version(kind, target))
            polls += 1
        os.kill(pid, signal.SIGKILL)
        while not _gone(pid):
            time.sleep(0.001)
        seen.add(exp.version(kind, target))  # after the kill: absent, or one version complete
        killed_mid_write += bool(_temps(tmp_path))
    print(f"{kind}: {KILLS_PER_KIND} kills, {killed_mid_write} mid-write, {polls} reads, saw {seen}")
    assert seen & {0, 1}, f"the writer never finished a {kind} in {KILLS_PER_KIND} runs"
    assert killed_mid_write, "no kill landed in the middle of a write: the test proved nothing"
    write(kind, ctx, target, 1)  # the next run's first write removes what the killed writers left
    assert exp.version(kind, target) == 1
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary left


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
    from dataset.cache_files import LATENT_FORMAT, write_cache
    from dataset.cache_names import text_cache_name
    from dataset.train_dataset import discover_cached_items
    from hunyuan_model.checkpoint import safetensors_files
    from training.checkpoints import STATE_FILE, Progress, find_latest_state, save_state

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
    write_cache(cache / name, {"latents": torch.zeros(16, 1, 8, 8)},
                {"format_version": LATENT_FORMAT, "item_key": "item", "latent_shape": "16x1x8x8"})  # fmt: skip
    (cache / text_cache_name("item")).write_bytes(b"")
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
        ),  # fmt: skip
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
