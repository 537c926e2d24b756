"""fp8 DiT weights: which tensors become float8, how close the model stays, LoRA trains on top, fp8 files load
(through the commands: test_fp8_commands.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fp8_testing import FP8_KEYS, TINY_FP8_WEIGHTS
from fp8_testing import fp8_file as _fp8_file
from fp8_testing import realistic_sd as _realistic_sd
from fp8_testing import rel_err as _rel_err
from lora_testing import tiny_inputs, tiny_model, tiny_network
from safetensors.torch import load_file, save_file
from torch import nn

from hunyuan_model.checkpoint import load_dit
from hunyuan_model.errors import CheckpointError
from hunyuan_model.fp8 import (
    FP8_DTYPE,
    Fp8Linear,
    all_finite,
    finite_flag,
    fp8_target_names,
    is_fp8_target,
    quantize_linears,
    quantize_weight,
)
from hunyuan_model.tiny import tiny_dit_state_dict


@pytest.fixture(scope="module")
def realistic_dit(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp8") / "dit.safetensors"
    save_file(_realistic_sd(), str(path))
    return path


def test_only_block_linear_weights_become_fp8(realistic_dit):
    for flags in ({"fp8_base": True}, {"fp8_scaled": True}):
        sd = load_dit(realistic_dit, torch.bfloat16, **flags).state_dict()
        fp8 = {k for k, v in sd.items() if v.dtype == FP8_DTYPE}
        assert fp8 == {k for k in sd if k in FP8_KEYS} and len(fp8) == TINY_FP8_WEIGHTS, flags
        for key, value in sd.items():
            if key in fp8:
                assert value.element_size() == 1 and value.dim() == 2, key
            elif key.endswith(".scale_weight"):
                assert flags == {"fp8_scaled": True} and value.dtype == torch.float32, key
                assert key.removesuffix("scale_weight") + "weight" in fp8
            else:  # biases, norms, modulation, embeddings, final layer, token refiner
                assert value.dtype == torch.bfloat16 and value.element_size() == 2, key
        scales = [k for k in sd if k.endswith(".scale_weight")]
        assert len(scales) == (TINY_FP8_WEIGHTS if "fp8_scaled" in flags else 0)


def test_converted_linears_keep_names_and_stay_linears():
    model = tiny_model()
    keys = set(model.state_dict())
    assert quantize_linears(model, scaled=False) == TINY_FP8_WEIGHTS
    assert set(model.state_dict()) == keys  # unscaled: no key added, none renamed
    names = fp8_target_names(model)
    assert "double_blocks.0.img_mod.linear" not in names and "single_blocks.1.modulation.linear" not in names
    assert not is_fp8_target("final_layer.linear") and not is_fp8_target("txt_in.individual_token_refiner.x")
    for name in names:
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear) and type(linear) is Fp8Linear
        assert isinstance(linear.weight, nn.Parameter) and not linear.weight.requires_grad
    assert quantize_linears(model, scaled=True) == 0  # already fp8: nothing done twice


def test_quantize_weight_clamps_and_scales_per_row():
    w = torch.tensor([[1000.0, -2000.0, 1.0], [0.01, -0.02, 0.0], [0.0, 0.0, 0.0]])
    q, scale = quantize_weight(w, scaled=False)
    assert scale is None and q.dtype == FP8_DTYPE
    assert q.float()[0].tolist() == [448.0, -448.0, 1.0]  # clamped to the fp8 range
    q, scale = quantize_weight(w, scaled=True)
    assert scale.shape == (3, 1) and scale.dtype == torch.float32
    assert scale[:, 0].tolist() == pytest.approx([2000 / 448, 0.02 / 448, 1.0])  # an all-zero row: scale 1
    assert q.float()[1].tolist() == pytest.approx([224.0, -448.0, 0.0])
    assert torch.equal(q.float()[2], torch.zeros(3))


def test_scaled_fp8_is_closer_to_fp32_than_plain_fp8(realistic_dit):
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = load_dit(realistic_dit, torch.float32).eval()(**inputs)
        plain = load_dit(realistic_dit, torch.float32, fp8_base=True).eval()(**inputs)
        scaled = load_dit(realistic_dit, torch.float32, fp8_scaled=True).eval()(**inputs)
    plain_err, scaled_err = _rel_err(plain, ref), _rel_err(scaled, ref)
    # Measured 7.6e-4 (plain) and 5.3e-4 (scaled); bounds pinned with ~2.7x margin. Not zero: fp8 took effect.
    assert 1e-5 < scaled_err < plain_err * 0.9
    assert plain_err < 2e-3 and scaled_err < 1.5e-3


def test_lora_trains_on_an_fp8_model(realistic_dit):
    model = load_dit(realistic_dit, torch.float32, fp8_scaled=True).requires_grad_(False)
    network = tiny_network(model)
    network.apply_to(model)
    network.train()
    with torch.no_grad():  # lora_up starts at zero: move it so gradients reach lora_down as well
        for name, p in network.named_parameters():
            if "lora_up" in name:
                p.normal_(0, 0.01)
    loss = model(**tiny_inputs()).square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    lora_params = list(network.parameters())
    assert len(lora_params) == 2 * TINY_FP8_WEIGHTS
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_params)
    assert all(p.grad is None for p in model.parameters())
    assert all(model.get_submodule(n).weight.dtype == FP8_DTYPE for n in fp8_target_names(model))


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "fp8_scaled"])
def test_a_float8_file_loads_as_it_is_or_upcast(tmp_path, scaled, caplog):
    path, expected = _fp8_file(tmp_path, scaled)
    stored = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(str(path)).items()}
    for flag in ("fp8_base", "fp8_scaled"):
        model = load_dit(path, torch.bfloat16, **{flag: True})
        for name in fp8_target_names(model):  # the file's bytes, untouched, and its scale
            linear = model.get_submodule(name)
            assert torch.equal(linear.weight.view(torch.uint8), stored[f"{name}.weight"].view(torch.uint8))
            if scaled:
                assert linear.scale_weight.shape == () and float(linear.scale_weight) == float(
                    stored[f"{name}.scale_weight"]
                )
            else:
                assert linear.scale_weight is None
    with caplog.at_level("INFO", logger="hunyuan_model.checkpoint"):
        model = load_dit(path, torch.float32)
    notes = [r for r in caplog.records if "upcast" in r.getMessage()]
    assert len(notes) == 1 and f"{TINY_FP8_WEIGHTS} float8 tensors" in notes[0].getMessage()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys() and not any(isinstance(m, Fp8Linear) for m in model.modules())
    for key, value in expected.items():
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value), key
    # The fp8 model computes what the upcast one does (same numbers, up to the order of the scale product).
    with torch.no_grad():
        fp8_out = load_dit(path, torch.float32, fp8_base=True).eval()(**tiny_inputs())
        assert _rel_err(fp8_out, model.eval()(**tiny_inputs())) < 1e-5


def test_a_per_row_scale_file_loads_and_a_misshapen_scale_is_refused(tmp_path):
    sd = _realistic_sd()
    key = "single_blocks.0.linear2.weight"
    q, scale = quantize_weight(sd[key], scaled=True)
    sd[key], sd["single_blocks.0.linear2.scale_weight"] = q, scale[:, 0]  # (out,): one value per row
    save_file(sd, str(tmp_path / "rows.safetensors"))
    linear = load_dit(tmp_path / "rows.safetensors", torch.float32, fp8_base=True).single_blocks[0].linear2
    assert linear.scale_weight.shape == (64, 1) and torch.equal(linear.scale_weight, scale)
    sd["single_blocks.0.linear2.scale_weight"] = scale[:5, 0]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"'single_blocks\.0\.linear2\.scale_weight' of shape \(5,\)"):
        load_dit(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_weight_is_refused_by_name(tmp_path, bad):
    sd = tiny_dit_state_dict()
    sd["double_blocks.1.txt_mlp.fc2.weight"][3, 7] = bad
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path))
    for flags in ({}, {"fp8_base": True}):  # fp8 would hide an Inf (clamped): checked before quantizing
        with pytest.raises(CheckpointError) as e:
            load_dit(path, **flags)
        assert str(e.value).count("\n") == 0 and str(path) in str(e.value)
        assert "'double_blocks.1.txt_mlp.fc2.weight' holds NaN or Inf" in str(e.value)


def test_finite_checks_read_float8_codes_and_survive_an_overflowing_sum(tmp_path):
    e4, e5 = torch.float8_e4m3fn, torch.float8_e5m2
    finite = [torch.tensor([1.0, -448.0, 0.0]).to(e4), torch.tensor([57344.0, -57344.0]).to(e5)]
    bad = [torch.tensor([1.0, v]).to(dt) for v in (float("nan"), -float("nan")) for dt in (e4, e5)]
    bad += [torch.tensor([1.0, v]).to(e5) for v in (float("inf"), -float("inf"))]
    bad += [torch.tensor([[1.0, 2.0], [float("inf"), 0.0]], dtype=torch.bfloat16)]
    for t in finite:
        assert bool(all_finite(t)) and bool(finite_flag(t)), t
    for t in bad:
        assert not bool(all_finite(t)) and not bool(finite_flag(t)), t
    huge = torch.full(
        (4, 4), 3e38
    )  # finite, but its sum is not: the quick flag's false alarm is confirmed away
    assert not bool(finite_flag(huge)) and bool(all_finite(huge))
    sd = tiny_dit_state_dict()
    sd["final_layer.linear.weight"][:2] = 3e38
    save_file(sd, str(tmp_path / "huge.safetensors"))
    assert float(
        load_dit(tmp_path / "huge.safetensors").final_layer.linear.weight.detach().max()
    ) == pytest.approx(3e38)
