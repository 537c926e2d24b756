"""Hostile --network_args values (code, huge numbers, regex bombs, runaway patterns) through hv_train_network.py:
one `error:` line, exit code 2, nothing executed, training stopped before the model loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hostile_files import DEMO_TOML, ROOT
from hostile_files import refused as _refused

import hv_train_network

pytestmark = pytest.mark.usefixtures("restore_logging")


# ---------------------------------------------------------------- --network_args

NETWORK_ARGS = {
    "code injection": ("verbose=__import__('os').system('touch {marker}')", "not a Python literal"),
    "call in a list": ("exclude_patterns=[open('{marker}', 'w')]", "not a Python literal"),
    "huge number": ("loraplus_lr_ratio=" + "9" * 5000, "not a Python literal"),
    "power tower": ("loraplus_lr_ratio=9**9**9", "not a Python literal"),
    "1e999": ("loraplus_lr_ratio=1e999", "expected a number > 0"),
    "deep nesting": ("exclude_patterns=" + "[" * 30_000 + "]" * 30_000, "not a Python literal"),
    "10 MB item": ("exclude_patterns=['" + "a" * 10_000_000 + "']", "too long"),
    "regex bomb": ("exclude_patterns=[r'(.*)*x']", "repeats a group that itself repeats"),
    "nested bomb": ("rank_patterns={r'(\\w+\\.?)+$': 4}", "repeats a group that itself repeats"),
    "invalid regex": ("include_patterns=[r'(']", "invalid regex"),
    "huge repeat count": ("exclude_patterns=[r'a{99999999999}']", "invalid regex"),
    "nested repeat in a conditional": (
        "exclude_patterns=[r'(x)?(?(1)a|(.*)*Z)']",
        "repeats a group that itself repeats",
    ),
    "10,000 patterns": (
        "exclude_patterns=[" + ", ".join(f"'m{i}'" for i in range(10_000)) + "]",
        "at most 1000",
    ),
    "unicode key": ("vérbose=True", "unknown key"),
    "right-to-left override": ("verbose=\u202eTrue", "not a Python literal"),
}


@pytest.mark.parametrize("case", list(NETWORK_ARGS), ids=list(NETWORK_ARGS))
def test_network_args_hostile_values(case, tmp_path, capsys):
    marker = tmp_path / "pwned"
    item, fragment = NETWORK_ARGS[case]
    item = item.replace("{marker}", str(marker))
    code = hv_train_network.main(
        ["--list_lora_targets", "json", "--network_dim", "4", "--network_args", item]
    )
    _refused(capsys, code, "network_args", fragment)
    assert not marker.exists()


# Patterns that parse but make `re` backtrack for hours on a module name: the guard meets them with the names
# (networks/pattern_guard.py). Each test runs a real process; its timeout is a safety net against a hang.
RUNAWAY_PATTERNS = {
    "(.|.)*Z": ("exclude_patterns=[r'(.|.)*Z']", "did not finish matching"),
    "twenty .* then Z": ("rank_patterns={r'" + ".*" * 20 + "Z': 4}", "did not finish matching"),
    "nested repeat in a conditional": (
        "include_patterns=[r'(x)?(?(1)a|(.*)*Z)']",
        "repeats a group that itself",
    ),
}


def _run_trainer(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "hv_train_network.py"), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def _refused_process(proc: subprocess.CompletedProcess, *fragments: str, logs: bool = False) -> str:
    lines = proc.stderr.strip().splitlines()
    if logs:
        lines = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 1000, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(RUNAWAY_PATTERNS), ids=list(RUNAWAY_PATTERNS))
def test_runaway_pattern_on_the_command_line(case):
    item, fragment = RUNAWAY_PATTERNS[case]
    proc = _run_trainer(["--list_lora_targets", "json", "--network_args", item])
    _refused_process(proc, "network_args", fragment)


def test_runaway_pattern_in_a_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('network_args = ["exclude_patterns=[r\'(.|.)*Z\']", "verbose=True"]\n')
    proc = _run_trainer(["--list_lora_targets", "--config_file", str(config)])
    _refused_process(proc, "exclude_patterns", "'(.|.)*Z' did not finish matching")


def test_runaway_pattern_stops_training_before_the_model_loads(cached_demo, dit_corpus, tmp_path):
    """The DiT has NaN weights, which loading it would report: the pattern is refused first (from headers)."""
    out = tmp_path / "out"
    nan_dit, _ = dit_corpus["NaN weight"]
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
        "--network_args",
        RUNAWAY_PATTERNS["(.|.)*Z"][0],
    ]
    _refused_process(_run_trainer(argv, cwd=cached_demo), "did not finish matching", logs=True)
    assert not out.exists()
