"""LoRA key layouts: they convert both ways keeping the weight update, and diffusers loads our converted files (its
own LoRA loading) and computes what we compute."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lora_file_testing import ALPHA, DIM
from lora_file_testing import assert_same_deltas as _assert_same_deltas
from lora_file_testing import deltas as _deltas
from lora_file_testing import one_error_line as _one_error_line
from lora_file_testing import trained_network as _trained
from lora_testing import network_720p
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import convert_lora
from lora_files.io import load_lora, save_network
from lora_files.layouts import Factors, to_diffusers, to_other

# ---------------------------------------------------------------- (c) layouts and round trips


def test_round_trip_default_other_default_keeps_the_weight_update(tiny_files, tmp_path):
    _, lora = tiny_files
    other, back = tmp_path / "other.safetensors", tmp_path / "back.safetensors"
    assert convert_lora.main(["--input", str(lora), "--output", str(other), "--target", "other"]) == 0
    assert convert_lora.main(["--input", str(other), "--output", str(back), "--target", "default"]) == 0
    keys = load_file(other).keys()
    assert all(
        k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys
    )
    assert "diffusion_model.double_blocks.0.img_attn_qkv.lora_A.weight" in keys
    _assert_same_deltas(_deltas(lora), _deltas(other))
    _assert_same_deltas(_deltas(lora), _deltas(back))
    assert {f.rank for f in load_lora(back).weights.values()} == {DIM}
    assert safe_open(str(back), "pt").metadata()["ss_network_dim"] == str(DIM)  # training metadata travels


def test_alpha_is_folded_half_into_each_factor(tiny_files):
    _, lora = tiny_files
    f = load_lora(lora).weights["double_blocks.0.img_attn_qkv"]
    a, b = to_other({"double_blocks.0.img_attn_qkv": f}).values()
    root = math.sqrt(ALPHA / DIM)
    assert torch.allclose(a, f.down * root) and torch.allclose(b, f.up * root)


def test_diffusion_pipe_layout_reads_as_ours(tiny_files, tmp_path):
    _, lora = tiny_files
    pipe = tmp_path / "pipe.safetensors"
    other = to_other(load_lora(lora).weights)
    save_file({k.replace("diffusion_model.", "transformer.", 1): v for k, v in other.items()}, pipe)
    loaded = load_lora(pipe)
    assert loaded.layout == "other"
    _assert_same_deltas(_deltas(lora), {n: f.delta() for n, f in loaded.weights.items()})


def test_round_trip_through_diffusers_names_keeps_rank_and_update(tiny_files, tmp_path):
    _, lora = tiny_files
    theirs, back = tmp_path / "diffusers.safetensors", tmp_path / "back.safetensors"
    assert convert_lora.main(["--input", str(lora), "--output", str(theirs), "--target", "diffusers"]) == 0
    assert convert_lora.main(["--input", str(theirs), "--output", str(back), "--target", "default"]) == 0
    keys = load_file(theirs).keys()
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in keys
    assert "transformer.transformer_blocks.1.attn.add_v_proj.lora_A.weight" in keys
    _assert_same_deltas(_deltas(lora), _deltas(back))
    assert {f.rank for f in load_lora(back).weights.values()} == {DIM}  # shared A: the rank stays


def _diffusers_qkv_file(path, metadata=None) -> dict[str, Factors]:
    """Independent LoRAs on to_q / to_k / to_v of a single block (no proj_mlp), as diffusers trainers write."""
    g = torch.Generator().manual_seed(5)
    parts = {
        p: Factors(torch.randn(r, 64, generator=g), torch.randn(64, r, generator=g), float(r))
        for p, r in (("to_q", 2), ("to_k", 3), ("to_v", 4))
    }
    sd = {}
    for p, f in parts.items():
        sd[f"transformer.single_transformer_blocks.1.attn.{p}.lora_A.weight"] = f.down
        sd[f"transformer.single_transformer_blocks.1.attn.{p}.lora_B.weight"] = f.up
    save_file(sd, path, metadata=metadata)
    return parts


def test_separate_qkv_loras_fuse_into_ours_with_the_ranks_summed(tiny_files, tmp_path, capsys):
    dit, _ = tiny_files
    src, out = tmp_path / "qkv.safetensors", tmp_path / "fused.safetensors"
    parts = _diffusers_qkv_file(
        src, metadata={"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8})}
    )
    # the MLP part of our fused linear1 has no LoRA: its width is only in the DiT
    assert convert_lora.main(["--input", str(src), "--output", str(out), "--target", "default"]) == 2
    assert "proj_mlp" in _one_error_line(capsys) and not out.exists()
    assert (
        convert_lora.main(
            ["--input", str(src), "--output", str(out), "--target", "default", "--dit", str(dit)]
        )
        == 0
    )
    fused = load_lora(out).weights["single_blocks.1.linear1"]
    assert fused.rank == 2 + 3 + 4 and fused.up.shape[0] == 3 * 64 + 256
    delta = fused.delta()
    for i, f in enumerate(parts.values()):  # diffusers' scale: lora_alpha 8 / each part's own rank
        assert torch.allclose(delta[i * 64 : (i + 1) * 64], f.up @ f.down * (8 / f.rank), atol=1e-5)
    assert delta[3 * 64 :].abs().max() == 0


# ---------------------------------------------------------------- (b) diffusers reads what we write


def _diffusers_pair():
    """diffusers' model at an odd tiny width with random weights, and ours with the same weights."""
    pytest.importorskip("peft")
    from diffusers_testing import CONFIG, diffusers_model

    from hunyuan_model.diffusers_layout import diffusers_to_original
    from hunyuan_model.model import build_dit

    theirs = diffusers_model()
    ours = build_dit(CONFIG)
    ours.load_state_dict(diffusers_to_original(theirs.state_dict()), strict=True, assign=True)
    return theirs, ours.eval().requires_grad_(False)


def _compare_with_lora(theirs, ours, network, adapter_sd: dict[str, torch.Tensor]) -> None:
    """diffusers with the adapter loaded == ours with the network applied; every key was used."""
    from diffusers_testing import dit_inputs
    from peft import get_peft_model_state_dict

    theirs.load_lora_adapter(adapter_sd, prefix="transformer", adapter_name="ours")
    loaded = get_peft_model_state_dict(theirs, adapter_name="ours")
    expected = {k.removeprefix("transformer."): v for k, v in adapter_sd.items()}
    assert loaded.keys() == expected.keys()  # no missing, no extra key
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    inp = dit_inputs()
    network.apply_to(ours)
    with torch.no_grad():
        a = ours(**inp)
        b = theirs(
            inp["x"],
            inp["t"],
            inp["text_states"],
            inp["text_mask"],
            inp["text_states_2"],
            inp["guidance"],
            return_dict=False,
        )[0]
        theirs.disable_lora()
        base = theirs(
            inp["x"],
            inp["t"],
            inp["text_states"],
            inp["text_mask"],
            inp["text_states_2"],
            inp["guidance"],
            return_dict=False,
        )[0]
    assert (a - base).abs().max() > 1e-3  # the LoRA matters
    assert (a - b).abs().max() <= 1e-4


def test_diffusers_pipeline_loader_reads_our_other_layout(tmp_path):
    """HunyuanVideoPipeline.load_lora_weights' path: its converter, then load_lora_adapter. Its converter splits
    single blocks' linear1 at a hard-coded 3072, so at this width the LoRA leaves linear1 out (see the 720p test)."""
    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    theirs, ours = _diffusers_pair()
    network = _trained(ours, r"exclude_patterns=[r'.*linear1']")
    path = tmp_path / "lora.safetensors"
    save_network(network, str(path))
    other = tmp_path / "other.safetensors"
    assert convert_lora.main(["--input", str(path), "--output", str(other), "--target", "other"]) == 0
    converted = HunyuanVideoLoraLoaderMixin.lora_state_dict(str(other))
    _compare_with_lora(theirs, ours, network, converted)


def test_diffusers_load_lora_adapter_reads_our_diffusers_layout_at_any_width(tmp_path):
    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    theirs, ours = _diffusers_pair()
    network = _trained(ours)  # every default target, single blocks' linear1 included
    path, out = tmp_path / "lora.safetensors", tmp_path / "diffusers.safetensors"
    save_network(network, str(path))
    assert convert_lora.main(["--input", str(path), "--output", str(out), "--target", "diffusers"]) == 0
    # the pipeline's load_lora_weights path: its converter leaves diffusers names as they are
    through_pipeline = HunyuanVideoLoraLoaderMixin.lora_state_dict(str(out))
    assert through_pipeline.keys() == load_file(out).keys()
    _compare_with_lora(theirs, ours, network, through_pipeline)


def test_720p_key_mapping_matches_diffusers_converter_and_model_on_meta():
    """At the real width diffusers' converter reads our `other` files: every module it names is a Linear of
    diffusers' 720p model with the LoRA's shapes, and our own diffusers layout names the same tensors."""
    import diffusers
    from diffusers.loaders.lora_pipeline import HunyuanVideoLoraLoaderMixin

    network = network_720p(dim=32, alpha=16.0)
    weights = {
        n: Factors(m.lora_down.weight, m.lora_up.weight, 16.0)
        for n, m in zip(network.module_names, network.loras, strict=True)
    }
    converted = HunyuanVideoLoraLoaderMixin.lora_state_dict(to_other(weights))
    with torch.device("meta"):
        model = diffusers.HunyuanVideoTransformer3DModel()
    modules = dict(model.named_modules())
    names = {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in converted}
    assert len(names) == 20 * 12 + 40 * 5  # q, k, v split: 12 per double block; linear1 -> 4 in single blocks
    for key, value in converted.items():
        linear = modules[key.removeprefix("transformer.").rsplit(".", 2)[0]]
        shape = (32, linear.in_features) if ".lora_A." in key else (linear.out_features, 32)
        assert tuple(value.shape) == shape, key
    ours = to_diffusers(weights)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in converted.items()}
