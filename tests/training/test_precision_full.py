"""--full_bf16 / --full_fp16 (musubi-tuner's meaning, from its hv_train.py): the LoRA's weights, gradients and
optimizer state in the autocast dtype, which must be that one."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from demo_run import demo_argv
from lora_testing import tiny_model, tiny_network
from safetensors import safe_open

import hv_train_network
import training.trainer
from hv_common.errors import UserError
from training.args import parse_args
from training.precision import allow_fp16_gradients, apply_full_precision, resolve_mixed_precision


@pytest.fixture
def fresh_accelerate(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield monkeypatch
    AcceleratorState._reset_state(reset_partial_state=True)


def _apply(argv: list[str]):
    config = parse_args(["--dit", "x", *argv])
    accelerator = Accelerator(mixed_precision=config.training.mixed_precision, cpu=True)
    config = resolve_mixed_precision(config, accelerator)
    network = tiny_network(tiny_model())
    apply_full_precision(network, accelerator, config)
    return network


def test_full_bf16_puts_the_lora_weights_in_bf16_and_keeps_alpha(fresh_accelerate, caplog):
    with caplog.at_level(logging.INFO, logger="training.precision"):
        network = _apply(["--full_bf16", "--mixed_precision", "bf16"])
    assert {p.dtype for p in network.parameters()} == {torch.bfloat16}
    assert {lora.alpha.dtype for lora in network.loras} == {torch.float32}
    assert "--full_bf16: LoRA weights, gradients and optimizer state in torch.bfloat16" in caplog.text
    assert {p.dtype for p in _apply(["--mixed_precision", "bf16"]).parameters()} == {torch.float32}


def test_the_autocast_dtype_must_match(fresh_accelerate):
    with pytest.raises(
        UserError,
        match=r"--full_bf16 needs mixed precision bf16 \(--mixed_precision bf16\); this run's is fp16",
    ):
        parse_args(["--full_bf16", "--mixed_precision", "fp16"])
    with pytest.raises(UserError, match="--full_bf16 needs mixed precision bf16 .*; this run's is no"):
        _apply(["--full_bf16"])  # unset, and accelerate's setting is "no"
    fresh_accelerate.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    AcceleratorState._reset_state(reset_partial_state=True)
    assert {p.dtype for p in _apply(["--full_bf16"]).parameters()} == {torch.bfloat16}


def test_full_fp16_needs_fp16_autocast_which_a_cpu_lacks(fresh_accelerate):
    with pytest.raises(UserError, match="on a CUDA GPU: a CPU has no fp16 autocast\\); this run's is no"):
        _apply(["--full_fp16", "--mixed_precision", "fp16"])


def test_full_fp16_lets_the_grad_scaler_unscale_fp16_gradients():
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    optimizer = torch.optim.SGD([param], lr=0.5)
    for patched in (False, True):
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        if patched:
            allow_fp16_gradients(scaler)
        param.grad = None
        scaler.scale((param.float() * 2).sum()).backward()
        if not patched:
            with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
                scaler.unscale_(optimizer)
            continue
        scaler.step(optimizer)
    assert param.dtype == torch.float16 and torch.equal(param.detach(), torch.zeros(3, dtype=torch.float16))


def test_a_full_bf16_run_trains_bf16_weights_to_a_finite_loss(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    seen: list = []
    real = training.trainer.optimizer_step

    def recording(run, losses):
        outcome = real(run, losses)
        seen.append((outcome.loss, {p.dtype for p in run.network.parameters()}, run.optimizer.state))
        return outcome

    monkeypatch.setattr(training.trainer, "optimizer_step", recording)
    argv = demo_argv(tmp_path / "out", "--full_bf16", "--mixed_precision", "bf16", "--output_name", "bf16")
    assert hv_train_network.main(argv) == 0
    assert all(math.isfinite(loss) and dtypes == {torch.bfloat16} for loss, dtypes, _ in seen)
    states = [s["exp_avg"].dtype for s in seen[-1][2].values()]
    assert states and set(states) == {torch.bfloat16}
    with safe_open(str(tmp_path / "out" / "bf16.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if k.endswith(".weight")}  # noqa: SIM118 (safe_open is not iterable)
    assert dtypes == {"BF16"}
    AcceleratorState._reset_state(reset_partial_state=True)
