"""training/base_weights.py: --base_weights / --base_weights_multiplier fold LoRA files into the DiT before
training: each Linear moves by exactly multiplier x its update, fp8 weights included."""

from __future__ import annotations

import pytest
import torch
from lora_file_testing import deltas

from hunyuan_model.checkpoint import load_dit
from hv_common.errors import UserError
from training.args import parse_args
from training.base_weights import base_multipliers, check_base_weights, merge_base_weights


def _options(*argv: str):
    return parse_args(list(argv)).training


def test_the_dit_moves_by_exactly_multiplier_times_the_update(tiny_files):
    dit, lora = tiny_files
    model = load_dit(dit, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_base_weights(
        model, _options("--base_weights", str(lora), "--base_weights_multiplier", "0.5"), str(dit)
    )
    after = model.state_dict()
    updates = deltas(lora)
    assert updates
    for key, value in after.items():
        name = key.removesuffix(".weight")
        if key.endswith(".weight") and name in updates:
            assert torch.allclose(value - before[key], 0.5 * updates[name], atol=1e-6), key
        else:
            assert torch.equal(value, before[key]), key


def test_two_files_add_up_and_a_missing_multiplier_is_one(tiny_files):
    dit, lora = tiny_files
    options = _options("--base_weights", str(lora), str(lora), "--base_weights_multiplier", "-0.25")
    assert base_multipliers(options) == [-0.25, 1.0]
    model = load_dit(dit, dtype=torch.float32)
    name, update = next(iter(deltas(lora).items()))
    before = model.get_submodule(name).weight.clone()
    merge_base_weights(model, options, str(dit))
    assert torch.allclose(model.get_submodule(name).weight - before, 0.75 * update, atol=1e-6)


def test_fp8_weights_are_merged_dequantized_and_stored_in_fp8_again(tiny_files):
    from hunyuan_model.fp8 import Fp8Linear, dequantize

    dit, lora = tiny_files
    dense = load_dit(dit, dtype=torch.float32)
    model = load_dit(dit, dtype=torch.float32, fp8_scaled=True)
    fp8 = [n for n in deltas(lora) if isinstance(model.get_submodule(n), Fp8Linear)]
    assert fp8
    unmerged = {n: model.get_submodule(n).weight.clone() for n in fp8}
    merge_base_weights(dense, _options("--base_weights", str(lora)), str(dit))
    merge_base_weights(model, _options("--base_weights", str(lora)), str(dit))
    for name in fp8:
        linear = model.get_submodule(name)
        assert linear.weight.dtype == torch.float8_e4m3fn and not torch.equal(linear.weight, unmerged[name])
        merged = dequantize(linear.weight, linear.scale_weight, torch.float32)
        expected = dense.get_submodule(name).weight.detach()
        step = expected.abs().amax(dim=1, keepdim=True) / 8  # fp8 e4m3: 3 mantissa bits, per-row scale
        assert bool(((merged - expected).abs() <= step).all()), name


def test_bad_base_weights_are_one_line_before_the_dit_loads(tmp_path):
    with pytest.raises(UserError, match="--base_weights .*nope.safetensors: no such file"):
        check_base_weights(_options("--base_weights", str(tmp_path / "nope.safetensors")))
    with pytest.raises(UserError, match="--base_weights_multiplier has 2 values for 1 --base_weights file"):
        _options("--base_weights", "a.safetensors", "--base_weights_multiplier", "1", "2")
    with pytest.raises(UserError, match="for 0 --base_weights"):
        _options("--base_weights_multiplier", "1")
