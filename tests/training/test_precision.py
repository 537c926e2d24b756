"""--mixed_precision unset means accelerate's setting, as in musubi-tuner; the LoRA records what autocast used."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors import safe_open

from hv_common.errors import UserError
from training.args import parse_args
from training.precision import resolve_mixed_precision

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_accelerate(monkeypatch):
    """accelerate keeps one process-wide state, fixed by the first Accelerator: start and leave it empty."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield monkeypatch
    AcceleratorState._reset_state(reset_partial_state=True)


def _resolved(argv: list[str]):
    args = parse_args(["--dit", "x", *argv])
    accelerator = Accelerator(
        mixed_precision=args.training.mixed_precision, cpu=True
    )  # as training/trainer.py builds it
    return resolve_mixed_precision(args, accelerator), accelerator


def test_the_default_is_unset_as_in_musubi_tuner():
    assert parse_args(["--dit", "x"]).training.mixed_precision is None


@pytest.mark.parametrize(
    ("env", "argv", "expected", "dtype"),
    [
        (None, [], "no", torch.float32),  # nothing anywhere: accelerate's own default
        ("bf16", [], "bf16", torch.bfloat16),  # accelerate launch --mixed_precision bf16 / accelerate config
        ("bf16", ["--mixed_precision", "no"], "no", torch.float32),  # the option wins, as in musubi-tuner
        (None, ["--mixed_precision", "bf16"], "bf16", torch.bfloat16),
    ],
)
def test_unset_takes_accelerates_setting(fresh_accelerate, env, argv, expected, dtype):
    if env:
        fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", env)
    args, accelerator = _resolved(argv)
    assert args.training.mixed_precision == expected
    with accelerator.autocast():
        out = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert out.dtype == dtype


def test_fp16_where_accelerate_cannot_autocast_is_recorded_as_no(fresh_accelerate, caplog):
    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with caplog.at_level(logging.WARNING):
        args, _ = _resolved([])
    assert args.training.mixed_precision == "no"
    assert "fp16" in caplog.text and "float32" in caplog.text


def test_an_accelerate_precision_we_do_not_train_with_is_a_user_error(fresh_accelerate):
    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    args = parse_args(["--dit", "x"])
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    accelerator.state._mixed_precision = "fp8"  # what accelerate reports for fp8 (TransformerEngine / MS-AMP)
    with pytest.raises(UserError, match="'fp8'.*--mixed_precision"):
        resolve_mixed_precision(args, accelerator)


def test_training_under_accelerates_bf16_writes_bf16_in_the_lora(cached_demo, tmp_path):
    """The real command in its own process, as `accelerate launch --mixed_precision bf16` starts it."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        str(ROOT / "hv_train_network.py"),
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(out),
        "--output_name",
        "bf16",
        "--network_module",
        "networks.lora",
        "--network_dim",
        "4",
        "--learning_rate",
        "1e-3",
        "--max_train_steps",
        "2",
        "--max_data_loader_n_workers",
        "0",
        "--sdpa",
        "--seed",
        "1",
    ]
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(argv, cwd=cached_demo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mixed precision: bf16 (from accelerate's setting" in done.stderr
    with safe_open(str(out / "bf16.safetensors"), "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "bf16"


def test_the_memory_estimate_assumes_accelerates_setting_when_unset(monkeypatch):
    from training.estimate_memory import memory_settings as settings_from_args

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert settings_from_args(parse_args(["--dit", "x"])).autocast
    assert not settings_from_args(parse_args(["--dit", "x", "--mixed_precision", "no"])).autocast
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert not settings_from_args(parse_args(["--dit", "x"])).autocast
