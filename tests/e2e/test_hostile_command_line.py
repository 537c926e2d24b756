"""Hostile command-line values that once ended in a traceback: huge seeds, an --output_dir that is a file, a
closed stdout. Each is one `error:` line (or a quiet SIGPIPE exit) now.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hostile_files import DEMO_TOML, ROOT
from hostile_files import refused as _refused

import hv_generate_video
import hv_train_network

pytestmark = pytest.mark.usefixtures("restore_logging")


# ---------------------------------------------------------------- tracebacks that are one line now


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1", "9" * 5000])
def test_huge_seed_on_the_command_line(seed, capsys):
    with pytest.raises(SystemExit) as info:
        hv_train_network.main(["--list_lora_targets", "json", "--seed", seed])
    assert info.value.code == 2
    _refused(capsys, 2, "--seed", "expected an integer >= 0 and <= 2**64 - 1")


def test_huge_seed_for_generation(capsys):
    with pytest.raises(SystemExit) as info:
        hv_generate_video.main(["--seed", "18446744073709551616", "--prompt", "x"])
    assert info.value.code == 2
    _refused(capsys, 2, "--seed", "expected an integer >= 0 and <= 2**64 - 1")


def test_largest_seed_is_accepted():
    from training.args import parse_args

    assert parse_args(["--seed", str(2**64 - 1)]).training.seed == 2**64 - 1


def test_output_dir_that_is_a_file_is_refused_before_the_model_loads(
    cached_demo, dit_corpus, tmp_path, monkeypatch, capsys
):
    """With a NaN DiT, which loading would report: the output folder is refused first."""
    monkeypatch.chdir(cached_demo)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    nan_dit, _ = dit_corpus["NaN weight"]
    for out, fragment in [(taken, "is a file, not a folder"), (taken / "sub", "is inside")]:
        argv = [
            "--config_file",
            DEMO_TOML,
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            str(out),
            "--sample_prompts",
            "",
            "--max_train_steps",
            "1",
            "--dit",
            str(nan_dit),
        ]
        _refused(capsys, hv_train_network.main(argv), "--output_dir", fragment, logs=True)
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("mode", ["json", "table"])
def test_closed_stdout_ends_quietly(mode):
    """`--list_lora_targets json | head -c 10` when head has gone: no traceback, the SIGPIPE exit code."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails (EPIPE)
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "hv_train_network.py"), "--list_lora_targets", mode],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=900,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr[-2000:]
