"""fp8 through the commands: training with --fp8_base/--fp8_scaled writes a LoRA, generation stays close and
refuses a LoRA merge, merge_lora.py and the inspector on fp8 files, fp8-matmul files' activation scales."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fp8_testing import FP8_KEYS, TINY_FP8_WEIGHTS
from fp8_testing import fp8_file as _fp8_file
from fp8_testing import rel_err as _rel_err
from lora_testing import tiny_network
from safetensors.torch import load_file, save_file

from hunyuan_model.checkpoint import load_dit
from hunyuan_model.errors import CheckpointError
from hunyuan_model.fp8 import (
    FP8_DTYPE,
    Fp8Linear,
)
from lora_files.io import save_network

DEMO_TOML = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_demo.toml")


@pytest.mark.parametrize("flag", ["--fp8_base", "--fp8_scaled"])
def test_training_cli_with_fp8_writes_a_lora(cached_demo, tmp_path, monkeypatch, restore_logging, flag):
    import hv_train_network
    from training.args import parse_args
    from training.run import build_run

    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
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
        flag,
        "--max_train_steps",
        "4",
        "--save_every_n_steps",
        "1000",
    ]
    model = build_run(parse_args(argv)).model  # the flag reaches load_dit
    fp8 = [n for n, m in model.named_modules() if isinstance(m, Fp8Linear) and m.weight.dtype == FP8_DTYPE]
    assert len(fp8) == TINY_FP8_WEIGHTS
    scaled = [n for n in fp8 if model.get_submodule(n).scale_weight is not None]
    assert len(scaled) == (TINY_FP8_WEIGHTS if flag == "--fp8_scaled" else 0)
    assert hv_train_network.main(argv) == 0
    ups = {
        k: v for k, v in load_file(str(out / "tiny_lora.safetensors")).items() if k.endswith("lora_up.weight")
    }
    assert len(ups) == TINY_FP8_WEIGHTS and all(v.abs().max() > 0 for v in ups.values())


def test_generation_with_fp8_stays_close_and_refuses_lora_merge(
    cached_demo, tmp_path, monkeypatch, capsys, restore_logging
):
    import hv_generate_video

    monkeypatch.chdir(cached_demo)
    dit = Path("models/tiny_dit.safetensors")
    network = tiny_network(load_dit(dit))
    with torch.no_grad():
        for lora in network.loras:
            lora.lora_up.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    save_network(network, str(tmp_path / "lora.safetensors"))
    base = [
        "--dit",
        str(dit),
        "--text_encoder1",
        "models/text_encoder",
        "--text_encoder2",
        "models/text_encoder_2",
        "--prompt",
        "a red ball",
        "--video_size",
        "32",
        "48",
        "--video_length",
        "5",
        "--infer_steps",
        "3",
        "--save_path",
        str(tmp_path),
        "--seed",
        "7",
        "--output_type",
        "latent",
        "--lora_weight",
        str(tmp_path / "lora.safetensors"),
    ]
    latents = {}
    for name, extra in (("ref", []), ("fp8", ["--fp8"]), ("scaled", ["--fp8_scaled"])):
        assert hv_generate_video.main([*base, "--output_name", name, *extra]) == 0
        latents[name] = load_file(str(tmp_path / f"{name}_latent.safetensors"))["latent"]
    # fp8 changes the numbers a little, not the picture (measured 1.7e-3 and 1.8e-3 relative, 3 steps).
    for name in ("fp8", "scaled"):
        assert 0 < _rel_err(latents[name], latents["ref"]) < 1e-2, name
    assert hv_generate_video.main([*base, "--fp8", "--lora_merge"]) == 2
    assert "--lora_merge needs a DiT in --dit_dtype" in capsys.readouterr().err


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "fp8_scaled"])
def test_merging_into_a_float8_file_writes_dense_weights_with_the_update(tmp_path, scaled):
    """merge_lora.py on ComfyUI's fp8 file: scales applied, the update added in fp32 and written in bf16 (a LoRA
    update is far below fp8's rounding step: requantized, most of it would vanish); no scale keys or marker."""
    import merge_lora
    from lora_files.apply import by_module, merged_weight
    from lora_files.io import load_lora

    path, upcast = _fp8_file(tmp_path, scaled)
    network = tiny_network(load_dit(path, torch.float32), dim=4, alpha=4.0)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0.0, 0.05)  # lora_up is zero at creation: give the update a size
    lora = tmp_path / "lora.safetensors"
    save_network(network, str(lora))
    out = tmp_path / "merged.safetensors"
    argv = [
        "--dit",
        str(path),
        "--lora_weight",
        str(lora),
        "--lora_multiplier",
        "0.5",
        "--save_merged_model",
        str(out),
    ]
    assert merge_lora.main(argv) == 0

    merged = load_file(str(out))
    assert merged.keys() == upcast.keys()  # original layout, no scale_weight, no marker
    updates = by_module([(load_lora(lora), 0.5)])
    assert {f"{name}.weight" for name in updates} <= FP8_KEYS
    for key, value in upcast.items():
        name = key.removesuffix(".weight")
        want = merged_weight(value, updates[name]) if name in updates else value
        assert merged[key].dtype == torch.bfloat16, key
        assert torch.equal(merged[key], want.to(torch.bfloat16)), key
    changed = [k for k in FP8_KEYS if not torch.equal(merged[k], upcast[k].to(torch.bfloat16))]
    assert len(changed) == len(updates)  # every LoRA update survived the write


def test_inspect_describes_a_scaled_fp8_file(tmp_path, capsys):
    import json

    from hunyuan_model.inspect import main as inspect_main

    path, _ = _fp8_file(tmp_path, scaled=True)
    assert inspect_main([str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "tiny" and info["fp8_scaled_linears"] == TINY_FP8_WEIGHTS
    assert info["dtypes"]["float8_e4m3fn"] == TINY_FP8_WEIGHTS


def test_activation_scales_of_fp8_matmul_files_are_read_past(tmp_path):
    """ComfyUI's fp8-matmul files also carry `<linear>.scale_input`: we compute in bf16, so loading, merging and
    inspecting ignore them (and only them: a stray scale_input without its Linear stays an unexpected key)."""
    import merge_lora

    path, upcast = _fp8_file(tmp_path, scaled=True)
    stored = load_file(str(path))
    with_inputs = dict(stored)
    for key in [k for k in stored if k.endswith(".scale_weight")]:
        with_inputs[key.replace(".scale_weight", ".scale_input")] = torch.tensor([0.5])
    other = tmp_path / "with_scale_input.safetensors"
    save_file(with_inputs, str(other))

    for flags in ({}, {"fp8_scaled": True}):
        a, b = (
            load_dit(path, torch.float32, **flags).state_dict(),
            load_dit(other, torch.float32, **flags).state_dict(),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "merged.safetensors"
    network = tiny_network(load_dit(path, torch.float32))
    lora = tmp_path / "lora.safetensors"
    save_network(network, str(lora))
    assert (
        merge_lora.main(["--dit", str(other), "--lora_weight", str(lora), "--save_merged_model", str(out)])
        == 0
    )
    assert load_file(str(out)).keys() == upcast.keys()

    stray = dict(stored)
    stray["model.diffusion_model.double_blocks.0.nothing.scale_input"] = torch.tensor([0.5])
    save_file(stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_dit(tmp_path / "stray.safetensors")
