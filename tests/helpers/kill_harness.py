"""Kill a writer at a chosen point of its write, deterministically: the harness of
tests/hv_common/test_atomic.py.

A helper process (`zygote_main`) imports everything and warms every writer up once, then forks one child per
request; each child writes one version of one target and is stopped at the chosen point:

- at a byte: RLIMIT_FSIZE is set to N and SIGXFSZ to its default action, so the kernel ends the child at the
  write (or ftruncate) that would take any file past byte N: nothing after it runs (no finally, no atexit),
  whatever language the writer is in (safetensors' Rust, FFmpeg's C, Python's buffered files).
- at a step of hv_common.atomic: its `os` and `shutil` are replaced, in the child only, by proxies whose chmod,
  fsync, replace and rmtree SIGKILL the child before (or after) the k-th such call. A recording write (no kill)
  lists those calls and the sizes of the files fsynced, from which the test picks its kill points.

Production code is untouched: all of it happens in the forked children of the test's helper process.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lora_files.io import save_network

ROOT = Path(__file__).resolve().parents[2]
HOOKED = {"os": ("chmod", "fsync", "replace"), "shutil": ("rmtree",)}  # the steps of hv_common.atomic

TARGETS = {
    "lora": "net.safetensors",
    "state": "net-step00000001-state",
    "cache": "item_0096x0096_hv.safetensors",
    "stream": "merged.safetensors",
    "plot": "loss.png",
    "video": "preview.mp4",
}


# ----------------------------------------------------------------------------- the writers, two versions each


@dataclass
class Context:
    """What the writers need, built the same way in the helper process and in the test (for the expected)."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object


def make_context() -> Context:
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    from lora_testing import tiny_model, tiny_network

    model = tiny_model()
    network = tiny_network(model, dim=16)
    network.apply_to(model)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return Context(network, optimizer, scheduler)


def lora_version(ctx: Context, v: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in ctx.network.parameters():
            p.fill_(v + 1.0)
    return {k: t.detach().clone() for k, t in ctx.network.state_dict().items()}


def tensors(v: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(v)
    return {f"t{i}": torch.randn(64, 1024, generator=g) for i in range(4)}


def latents(v: int) -> torch.Tensor:
    return torch.randn(16, 5, 24, 24, generator=torch.Generator().manual_seed(100 + v))


def losses(v: int) -> list[float]:
    return [1.0 / (1 + i) + 0.1 * v * (i % 3) for i in range(200)]


def frames(v: int) -> np.ndarray:
    rng = np.random.default_rng(v)
    return rng.integers(0, 255, size=(9, 64, 96, 3), dtype=np.uint8)


def write(kind: str, ctx: Context, target: Path, v: int) -> None:
    """Write version v of `kind` at target (for a video, target is the .mp4 and the stem is derived)."""
    if kind == "lora":
        lora_version(ctx, v)
        save_network(ctx.network, str(target), metadata={"version": str(v)})
    elif kind == "state":
        from training.saving import Progress, save_state

        lora_version(ctx, v)
        save_state(target, ctx.network, ctx.optimizer, ctx.scheduler, Progress(step=v + 1), {"version": v})
    elif kind == "cache":
        from dataset.cache_files import write_latent_cache

        write_latent_cache(target, latents(v), (96, 96), None, {"version": str(v)})
    elif kind == "stream":
        from hv_common.safetensors_stream import write_safetensors_streaming

        ts = tensors(v)
        specs = [(k, t.dtype, tuple(t.shape)) for k, t in ts.items()]
        write_safetensors_streaming(target, specs, ts.__getitem__, {"version": str(v)})
    elif kind == "plot":
        from run_report.loss_plot import Curves, write_loss_plot

        write_loss_plot(target, Curves(loss=list(enumerate(losses(v), 1)), title=f"version {v}"))
    elif kind == "video":
        from hv_common.video_io import write_media

        write_media(frames(v), target.with_suffix(""))
    else:
        raise ValueError(kind)


# ----------------------------------------------------------------------------- the child: write once, maybe die


class _Proxy:
    """A module whose listed functions are replaced; every other name is the module's own."""

    def __init__(self, module: object, **replaced: object) -> None:
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


def _no_core_dump() -> None:
    """SIGXFSZ's default action dumps core: not here (a pipe core_pattern ignores RLIMIT_CORE, hence prctl)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


def die_at_byte(n: int) -> None:
    _no_core_dump()
    resource.setrlimit(resource.RLIMIT_FSIZE, (n, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it at start-up (writes then fail EFBIG)


def _hook_atomic_steps(target: Path, kill: dict | None, events: list[dict]) -> None:
    """Count hv_common.atomic's steps into `events`; SIGKILL before or after the chosen one."""
    import hv_common.atomic as atomic

    def hooked(module: object, name: str):
        real = getattr(module, name)

        def step(*args, **kwargs):
            index = len(events)
            event: dict = {"op": name}
            if name == "replace":
                event.update(aside=Path(args[0]) == target, into=Path(args[1]) == target)
            if name == "fsync" and stat.S_ISREG((st := os.fstat(args[0])).st_mode):  # a file, not a folder
                event["size"] = st.st_size
            if kill and kill.get("before") == index:
                os.kill(os.getpid(), signal.SIGKILL)
            events.append(event)
            result = real(*args, **kwargs)
            if kill and kill.get("after") == index:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return step

    for attr, module in (("os", os), ("shutil", shutil)):
        setattr(atomic, attr, _Proxy(module, **{n: hooked(module, n) for n in HOOKED[attr]}))


def _child(ctx: Context, request: dict) -> None:
    target, kill = Path(request["target"]), request.get("kill")
    events: list[dict] = []
    if kill and "byte" in kill:
        # stderr may be a file (pytest's capture): a warning written there must not be what crosses byte N
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        die_at_byte(kill["byte"])
    else:
        _hook_atomic_steps(target, kill, events)
    write(request["kind"], ctx, target, request["version"])
    if request.get("record"):
        Path(request["record"]).write_text(json.dumps(events))


# ----------------------------------------------------------------------------- the helper process


def zygote_main() -> None:
    """Warm every writer up, then for each JSON request line fork a child that writes once; reply how it ended."""
    torch.set_num_threads(1)  # no OpenMP pool exists when we fork: children may compute safely
    ctx = make_context()
    scratch = Path(tempfile.mkdtemp())
    for kind, name in TARGETS.items():  # lazy imports, font caches, codecs: done here, not in a killed child
        write(kind, ctx, scratch / name, 0)
    shutil.rmtree(scratch)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(ctx, request)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        died = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        print(json.dumps({"signal": died, "exit": exit_code}), flush=True)
