"""A full disk during a save: the command ends with one `error:` line and exit code 2, the files saved before
are byte-identical, and no temporary is left. The failure is injected at the lowest write each save uses (the
file object's write, or safetensors' save_file after it wrote half the bytes); one test lets the kernel refuse
the write for real (RLIMIT_FSIZE: EFBIG), through safetensors' own Rust writer.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
from conftest import DEMO_CONFIG

import cache_latents
import convert_lora
import hv_train_network
import merge_lora
from hv_common.atomic import is_temp_name
from lora_files.io import save_network

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")
ENOSPC_LINE = "error: no space left on device while writing "


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _files(root: Path) -> dict[str, bytes]:
    """Every finished file under root (temporaries excluded), by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(is_temp_name(part) for part in p.relative_to(root).parts)
    }


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


def _error_line(err: str) -> str:
    """The command's last stderr line, and no traceback before it (logging and tqdm lines may precede)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]  # \r: tqdm's bars
    assert sum(line.startswith("error:") for line in lines) == 1, [x for x in lines if "error" in x]
    return lines[-1]


class FullAfter:
    """A file object whose writes fail with ENOSPC once `limit` bytes went through (a disk that fills)."""

    def __init__(self, f, limit: int) -> None:
        self._f, self._left = f, limit

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self._left:
            self._f.write(bytes(memoryview(data).cast("B")[: self._left]))
            self._left = 0
            raise _enospc()
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _train(out: Path, *extra: str) -> int:
    argv = [
        "--config_file",
        DEMO_TOML,
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        "--max_train_steps",
        "6",
        "--save_every_n_steps",
        "2",
        "--save_state",
        *extra,
    ]
    return hv_train_network.main(argv)


def test_full_disk_during_a_lora_save_mid_training(
    cached_demo, tmp_path, monkeypatch, capsys, restore_logging
):
    """Saves at step 2 (LoRA, state); the step-4 LoRA save hits a full disk after half its bytes."""
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    real_save, calls, before = safetensors.torch.save_file, [], {}

    def save_file(tensors, filename, metadata=None):
        calls.append(Path(filename).name)
        if len(calls) < 3:  # step 2: the LoRA file, then the state's LoRA
            return real_save(tensors, filename, metadata=metadata)
        before.update(_files(out))
        Path(filename).write_bytes(safetensors.torch.save(tensors, metadata)[:5000])
        raise _enospc()

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    assert _train(out) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(ENOSPC_LINE + str(out / "tiny_lora-step00000004.safetensors")), line
    assert "intact" in line
    assert calls[-1] == "tiny_lora-step00000004.safetensors"
    assert sorted(before) == [
        "tiny_lora-step00000002-state/lora.safetensors",
        "tiny_lora-step00000002-state/train_state.pt",
        "tiny_lora-step00000002.safetensors",
        "tiny_lora_loss.png",
        "tiny_lora_report.html",
    ]
    assert _files(out) == before and _temps(out) == []


def test_full_disk_during_a_state_save(cached_demo, tmp_path, monkeypatch, capsys, restore_logging):
    """The step-4 state's train_state.pt fills the disk: torch.save's RuntimeError still says ENOSPC."""
    import training.saving as checkpoints

    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    opened, before = [], {}

    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (handed to the caller's with)
        opened.append(path)
        if len(opened) < 2:
            return f
        before.update(_files(out))
        return FullAfter(f, limit=600)

    monkeypatch.setattr(checkpoints, "open", fake_open, raising=False)
    assert _train(out) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(ENOSPC_LINE + str(out / "tiny_lora-step00000004-state") + ";"), line
    assert len(opened) == 2 and "tiny_lora-step00000004.safetensors" in before  # the LoRA came first
    assert _files(out) == before and _temps(out) == []
    assert not (out / "tiny_lora-step00000004-state").exists()


def test_full_disk_while_caching_latents(cached_demo, tmp_path, monkeypatch, capsys, restore_logging):
    """The second cache file of a re-run fails: the old one under its name is intact."""
    import dataset.cache_files as cache_files

    run = tmp_path / "run"
    shutil.copytree(cached_demo / "demo", run / "demo")
    (run / "models").symlink_to(cached_demo / "models")
    monkeypatch.chdir(run)
    cache = run / "demo" / "cache"
    before = _files(cache)
    real_save, calls = cache_files.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(Path(filename).name)
        if len(calls) < 2:
            return real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\x00" * 100)
        raise _enospc()

    monkeypatch.setattr(cache_files, "save_file", save_file)
    assert cache_latents.main(["--dataset_config", DEMO_CONFIG, "--vae", "models/vae"]) == 2
    line = _error_line(capsys.readouterr().err)
    failed = calls[-1]
    assert line.startswith(ENOSPC_LINE) and line.split(ENOSPC_LINE)[1].split(";")[0].endswith(failed), line
    after = _files(cache)
    assert after.keys() == before.keys() and _temps(cache) == []
    assert [k for k in after if k.endswith(failed)] and all(
        after[k] == before[k] for k in after if k.endswith(failed)
    )


def _lora_for_tiny_dit(path: Path) -> None:
    from lora_testing import tiny_model, tiny_network

    save_network(tiny_network(tiny_model(), dim=4), str(path))


def test_full_disk_while_merging(cached_demo, tmp_path, monkeypatch, capsys, restore_logging):
    """merge_lora's streaming writer fills the disk half-way: the merged file of the last run is intact."""
    import hv_common.safetensors_stream as stream

    monkeypatch.chdir(cached_demo)
    lora, merged = tmp_path / "lora.safetensors", tmp_path / "merged.safetensors"
    _lora_for_tiny_dit(lora)
    argv = [
        "--dit",
        "models/tiny_dit.safetensors",
        "--lora_weight",
        str(lora),
        "--save_merged_model",
        str(merged),
    ]
    assert merge_lora.main(argv) == 0
    before = merged.read_bytes()

    def full_half_way(path, mode):
        return FullAfter(open(path, mode), limit=len(before) // 2)  # noqa: SIM115 (the caller's with closes it)

    monkeypatch.setattr(stream, "open", full_half_way, raising=False)
    assert merge_lora.main([*argv, "--save_dtype", "bfloat16"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(ENOSPC_LINE + str(merged) + ";"), line
    assert merged.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        lora.name,
        merged.name,
    ]


@pytest.mark.slow
def test_a_real_file_size_limit_through_safetensors(cached_demo, tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG) inside safetensors' Rust writer: one line, exit 2."""
    lora, out = tmp_path / "lora.safetensors", tmp_path / "out" / "converted.safetensors"
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    _lora_for_tiny_dit(lora)
    limit = lora.stat().st_size // 2

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        sys.executable,
        str(Path(convert_lora.__file__).resolve()),
        "--input",
        str(lora),
        "--output",
        str(out),
        "--target",
        "other",
    ]
    proc = subprocess.run(cmd, preexec_fn=small_files, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr)
    assert line.startswith(f"error: file too large while writing {out};"), line
    assert list(out.parent.iterdir()) == []
