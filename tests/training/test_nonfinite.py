"""The NaN/Inf guard: a non-finite step leaves the weights alone and is logged; too many in a row stop the run
with exit code 2 and the last good weights on disk, from which --resume continues."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import hv_train_network
from training import step

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")


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
        *extra,
    ]
    return hv_train_network.main(argv)


class _InfGrad(torch.autograd.Function):
    """Passes a finite loss forward and sends an infinite gradient back."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def _poison(monkeypatch, bad_calls, kind: str = "nan") -> None:
    """Make the loss of the chosen micro-batches (1-based) NaN, or its gradient infinite."""
    real, calls = step.flow_loss, [0]

    def flow_loss(*args):
        calls[0] += 1
        loss = real(*args)
        if calls[0] >= 3 if bad_calls == "from3" else calls[0] in bad_calls:
            return loss * math.nan if kind == "nan" else _InfGrad.apply(loss)
        return loss

    monkeypatch.setattr(step, "flow_loss", flow_loss)


def _lora(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"tiny_lora-step{step:08d}.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["nan", "inf_grad"])
def test_a_nonfinite_step_is_skipped_and_logged(
    cached_demo, tmp_path, monkeypatch, capsys, restore_logging, kind
):
    monkeypatch.chdir(cached_demo)
    _poison(monkeypatch, {3, 4}, kind)
    out = tmp_path / "out"
    assert _train(out, "--max_train_steps", "6", "--save_every_n_steps", "1", "--save_state") == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "optimizer step skipped" in line]
    assert [line.split("step ")[1].split(":")[0] for line in skipped] == ["3", "4"], skipped
    assert "(2 in a row, stop at 5)" in skipped[1]
    assert _same(_lora(out, 2), _lora(out, 3)) and _same(_lora(out, 3), _lora(out, 4))  # untouched
    assert not _same(_lora(out, 4), _lora(out, 5))  # and training goes on
    final = load_file(str(out / "tiny_lora.safetensors"))
    assert all(torch.isfinite(v).all() for v in final.values())
    state = torch.load(out / "tiny_lora-step00000006-state" / "train_state.pt", weights_only=True)
    assert state["progress"]["step"] == 6 and state["scheduler"]["last_epoch"] == 6  # skipped steps count
    assert state["optimizer"]["state"][0]["step"].item() == 4  # ... but AdamW made 4 updates
    losses = state["extra"]["losses"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)  # the history keeps finite losses


def test_too_many_in_a_row_stop_with_the_last_good_state_and_resume(
    cached_demo, tmp_path, monkeypatch, capsys, restore_logging
):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    common = ["--max_train_steps", "8", "--save_every_n_steps", "2", "--save_state"]
    with monkeypatch.context() as m:
        _poison(m, "from3")
        assert _train(out, *common, "--max_nonfinite_steps", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "steps 3-5: 3 optimizer steps in a row had a non-finite loss" in errors[0]
    assert "tiny_lora-step00000005.safetensors" in errors[0] and "tiny_lora-step00000005-state" in errors[0]
    assert not (out / "tiny_lora.safetensors").exists()  # the run did not finish
    assert _same(_lora(out, 5), _lora(out, 2))  # the last good weights: those of step 2
    with safe_open(str(out / "tiny_lora-step00000005.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "5"
    state = torch.load(out / "tiny_lora-step00000005-state" / "train_state.pt", weights_only=True)
    assert state["progress"]["step"] == 5
    assert all(
        torch.isfinite(v).all()
        for v in load_file(str(out / "tiny_lora-step00000005-state/lora.safetensors")).values()
    )

    assert _train(out, *common, "--resume", "auto") == 0  # the cause is gone: it continues from step 5
    err = capsys.readouterr().err
    assert "at step 5" in err and "optimizer step skipped" not in err
    with safe_open(str(out / "tiny_lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "8"
    final = load_file(str(out / "tiny_lora.safetensors"))
    assert not _same(final, _lora(out, 5)) and all(torch.isfinite(v).all() for v in final.values())


def test_zero_turns_the_guard_off(cached_demo, tmp_path, monkeypatch, capsys, restore_logging):
    monkeypatch.chdir(cached_demo)
    _poison(monkeypatch, {2})
    out = tmp_path / "out"
    assert _train(out, "--max_train_steps", "3", "--max_nonfinite_steps", "0") == 0
    assert "skipped" not in capsys.readouterr().err
    final = load_file(str(out / "tiny_lora.safetensors"))
    assert any(torch.isnan(v).any() for v in final.values())  # what the guard is there to prevent
