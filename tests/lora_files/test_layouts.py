"""LoRA interop: applied == merged, the key layouts convert both ways keeping the weight update, diffusers
loads our converted files (its own LoRA loading) and computes what we compute, and bad input is one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lora_testing import network_720p, tiny_inputs, tiny_network
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import convert_lora
import merge_lora
from hunyuan_model.checkpoint import load_dit, read_state_dict, to_original_layout
from hunyuan_model.diffusers_layout import original_to_diffusers
from hunyuan_model.lazy_checkpoint import LazyDiT
from hunyuan_model.tiny import write_tiny_dit
from hv_common.safetensors_stream import write_safetensors_streaming
from lora_files.apply import apply_on_the_fly, restore_all
from lora_files.io import load_lora, load_network, save_network
from lora_files.layouts import Factors, to_diffusers, to_other

ALPHA, DIM = 3.0, 4  # alpha != dim: a forgotten scale shows


def _trained(model, *network_args: str, seed: int = 3):
    """A network on `model` with trained-looking (non-zero) lora_up weights."""
    network = tiny_network(model, *network_args, dim=DIM, alpha=ALPHA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.loras:
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g) * 0.1)
    return network


@pytest.fixture
def tiny_files(tmp_path):
    """(the tiny DiT file, a LoRA file for it in our layout)."""
    dit = write_tiny_dit(tmp_path / "models")
    network = _trained(load_dit(dit))
    lora = tmp_path / "lora.safetensors"
    save_network(network, str(lora), metadata={"ss_network_dim": str(DIM)})
    return dit, lora


def _deltas(path) -> dict[str, torch.Tensor]:
    return {name: f.delta() for name, f in load_lora(path).weights.items()}


def _assert_same_deltas(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- (a) applied == merged


def test_lora_applied_equals_lora_merged(tiny_files, tmp_path):
    dit, lora = tiny_files
    inputs = tiny_inputs()
    model = load_dit(dit).eval()
    with torch.no_grad():
        base = model(**inputs)
        network = tiny_network(model, dim=DIM, alpha=ALPHA)
        load_network(network, str(lora))
        network.set_multiplier(0.7)
        network.apply_to(model)
        applied = model(**inputs)
        network.restore()
        # our generator's loader: a LoRAModule per module of the file, no --network_args selection
        modules = apply_on_the_fly(model, [(load_lora(lora), 0.7)])
        loader = model(**inputs)
        restore_all(modules)
        assert torch.equal(model(**inputs), base)  # restored

    out = tmp_path / "merged.safetensors"
    argv = [
        "--dit",
        str(dit),
        "--lora_weight",
        str(lora),
        "--lora_multiplier",
        "0.7",
        "--save_merged_model",
        str(out),
    ]
    assert merge_lora.main(argv) == 0
    with torch.no_grad():
        merged = load_dit(out).eval()(**inputs)
    assert (applied - base).abs().max() > 1e-3  # the LoRA does something
    assert (applied - merged).abs().max() <= 1e-5
    assert (applied - loader).abs().max() <= 1e-5
    assert json.loads(safe_open(str(out), "pt").metadata()["merged_loras"]) == [
        {"file": "lora.safetensors", "multiplier": 0.7}
    ]


def test_merging_two_loras_sums_their_updates_and_keeps_other_tensors(tiny_files, tmp_path):
    dit, lora = tiny_files
    second = tmp_path / "second.safetensors"
    save_network(_trained(load_dit(dit), "exclude_patterns=[r'.*single_blocks.*']", seed=9), str(second))
    out = tmp_path / "merged.safetensors"
    argv = [
        "--dit",
        str(dit),
        "--lora_weight",
        str(lora),
        str(second),
        "--lora_multiplier",
        "0.5",
        "-1.5",
        "--save_merged_model",
        str(out),
        "--save_dtype",
        "bf16",
    ]
    assert merge_lora.main(argv) == 0
    base, merged = read_state_dict(dit), read_state_dict(out)
    assert base.keys() == merged.keys() and all(v.dtype == torch.bfloat16 for v in merged.values())
    first, other = _deltas(lora), _deltas(second)
    for key, value in base.items():
        name = key.removesuffix(".weight")
        expected = (
            value + 0.5 * first.get(name, 0) - 1.5 * other.get(name, 0) if key.endswith(".weight") else value
        )
        assert torch.allclose(merged[key].float(), expected.to(torch.bfloat16).float(), atol=1e-2, rtol=0), (
            key
        )
    assert not torch.equal(
        merged["double_blocks.0.img_attn_qkv.weight"].float(),
        base["double_blocks.0.img_attn_qkv.weight"].to(torch.bfloat16).float(),
    )


def test_merge_streams_every_dit_layout_to_the_same_result(tiny_files, tmp_path):
    dit, lora = tiny_files
    diffusers_dit, official = tmp_path / "diffusers_dit.safetensors", tmp_path / "mp_rank_00_model_states.pt"
    theirs = original_to_diffusers(read_state_dict(dit))
    save_file({k: v.contiguous() for k, v in theirs.items()}, diffusers_dit)
    torch.save({"module": read_state_dict(dit)}, official)  # the official .pt form, read memory-mapped
    with LazyDiT(diffusers_dit) as lazy:
        eager = to_original_layout(read_state_dict(diffusers_dit))
        assert sorted(lazy.keys()) == sorted(eager)
        assert all(torch.equal(lazy.get(k), eager[k]) for k in eager)
        assert all(lazy.meta(k).shape == eager[k].shape for k in eager)
    outs = []
    for source in (dit, diffusers_dit, official):
        outs.append(tmp_path / f"merged_{source.stem}.safetensors")
        argv = ["--dit", str(source), "--lora_weight", str(lora), "--save_merged_model", str(outs[-1])]
        assert merge_lora.main(argv) == 0
    first = load_file(outs[0])
    for other in outs[1:]:
        merged = load_file(other)
        assert first.keys() == merged.keys() and all(torch.equal(first[k], merged[k]) for k in first)


def test_streaming_writer_is_read_back_by_safetensors(tmp_path):
    tensors = {
        "b": torch.randn(3, 5).to(torch.bfloat16),
        "a": torch.arange(7, dtype=torch.int64),
        "c": torch.tensor([True, False, True]),
        "s": torch.tensor(2.5),
        "h": torch.randn(2, 2, 3).half(),
    }
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in sorted(tensors.items())]
    path = write_safetensors_streaming(tmp_path / "x.safetensors", specs, tensors.__getitem__, {"k": "v"})
    back = load_file(path)
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    assert safe_open(str(path), "pt").metadata() == {"k": "v"}
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    for name, tensor in tensors.items():  # every tensor starts at a multiple of its element size
        assert header[name]["data_offsets"][0] % tensor.element_size() == 0, name


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


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def _foreign_lora(path) -> None:
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
        },
        path,
    )


def _other_size_lora(path) -> None:
    """Our layout and names, but a 720p-wide module: the tiny DiT is 64 wide."""
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 3072),
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(3072, 4),
        },
        path,
    )


def _other_blocks_lora(path) -> None:
    """Block 7 of a model the tiny DiT (2 double blocks) does not have."""
    save_file(
        {
            "lora_unet_double_blocks_7_img_attn_proj.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_double_blocks_7_img_attn_proj.lora_up.weight": torch.zeros(64, 4),
        },
        path,
    )


def test_convert_rejects_an_unknown_layout_naming_the_key(tmp_path, capsys):
    src, out = tmp_path / "sdxl.safetensors", tmp_path / "out.safetensors"
    _foreign_lora(src)
    assert convert_lora.main(["--input", str(src), "--output", str(out), "--target", "other"]) == 2
    line = _one_error_line(capsys)
    assert (
        "unknown LoRA layout" in line
        and "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in line
    )
    assert (
        convert_lora.main(
            ["--input", str(tmp_path / "nope.safetensors"), "--output", str(out), "--target", "other"]
        )
        == 2
    )
    assert "not found" in _one_error_line(capsys)
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert (
        convert_lora.main(
            ["--input", str(tmp_path / "torn.safetensors"), "--output", str(out), "--target", "other"]
        )
        == 2
    )
    assert "cannot read LoRA file" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sdxl.safetensors", "torn.safetensors"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_foreign_lora, "unknown LoRA layout"),
        (_other_size_lora, "3072 x 3072 in the LoRA but 64 x 64"),
        (_other_blocks_lora, "double_blocks.7.img_attn_proj is not a Linear of the DiT"),
    ],
)
def test_merge_rejects_loras_that_do_not_fit(tiny_files, tmp_path, capsys, make, expected):
    dit, lora = tiny_files
    bad, out = tmp_path / "bad.safetensors", tmp_path / "merged.safetensors"
    make(bad)
    argv = ["--dit", str(dit), "--lora_weight", str(lora), str(bad), "--save_merged_model", str(out)]
    assert merge_lora.main(argv) == 2
    assert expected in _one_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_merge_rejects_bad_arguments(tiny_files, tmp_path, capsys):
    dit, lora = tiny_files
    out = tmp_path / "merged.safetensors"
    base = ["--dit", str(dit), "--save_merged_model", str(out)]
    assert merge_lora.main([*base, "--lora_weight", str(lora), "--lora_multiplier", "1", "2"]) == 2
    assert "2 values for 1 --lora_weight" in _one_error_line(capsys)
    assert merge_lora.main([*base, "--lora_weight", str(tmp_path / "missing.safetensors")]) == 2
    assert "LoRA file not found" in _one_error_line(capsys)
    argv = [
        "--dit",
        str(tmp_path / "no_dit.safetensors"),
        "--lora_weight",
        str(lora),
        "--save_merged_model",
        str(out),
    ]
    assert merge_lora.main(argv) == 2
    assert "DiT checkpoint not found" in _one_error_line(capsys)
    assert (
        merge_lora.main(["--dit", str(lora), "--lora_weight", str(lora), "--save_merged_model", str(out)])
        == 2
    )
    assert "not a HunyuanVideo DiT" in _one_error_line(capsys)
    assert not out.exists()
