"""training/saving.py's LoRA files: --save_precision's dtype, and --save_comfyui_layout's second file in the
`other` layout, which ComfyUI loads whole where it drops modules of the default layout."""

from __future__ import annotations

import re

import pytest
import torch
from demo_run import demo_argv
from lora_file_testing import assert_same_deltas, deltas
from lora_file_testing import trained_network as _trained
from lora_testing import tiny_model
from safetensors import safe_open

import hv_train_network
from hv_common.devices import parse_dtype
from lora_files.io import load_lora
from training.options.outputs import SAVE_PRECISIONS, SavingOptions
from training.saving import comfyui_path, save_lora_files


@pytest.fixture(scope="module")
def run_dir(cached_demo, tmp_path_factory):
    """3 steps, a LoRA every step (the last 1 kept), fp32, ComfyUI copies, modulation modules trained too."""
    out = tmp_path_factory.mktemp("saving")
    extra = [
        "--output_name",
        "tiny",
        "--save_every_n_steps",
        "1",
        "--save_last_n_steps",
        "1",
        "--save_precision",
        "fp32",
        "--save_comfyui_layout",
        "--network_args",
        "include_patterns=[r'.*mod.*']",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cached_demo)
        assert hv_train_network.main(demo_argv(out, *extra, steps=3)) == 0
    return out


def _dtypes(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118


def test_every_saved_lora_has_a_comfyui_copy_pruned_with_it(run_dir):
    names = sorted(p.name for p in run_dir.iterdir() if p.suffix == ".safetensors")
    assert names == [
        "tiny-step00000002.comfyui.safetensors",
        "tiny-step00000002.safetensors",
        "tiny.comfyui.safetensors",
        "tiny.safetensors",
    ]


def test_the_comfyui_copy_has_every_module_in_the_other_layout(run_dir):
    default, comfy = load_lora(run_dir / "tiny.safetensors"), load_lora(run_dir / "tiny.comfyui.safetensors")
    assert comfy.layout == "other" and comfy.metadata == default.metadata
    modules = set(default.weights)
    # the MLP and modulation modules, which ComfyUI drops from a default-layout file, are there
    for part in ("img_mlp.fc1", "txt_mlp.fc2", "img_mod.linear", "txt_mod.linear", "modulation.linear"):
        assert any(part in m for m in modules), part
    with safe_open(str(run_dir / "tiny.comfyui.safetensors"), framework="pt") as f:
        keys = set(f.keys())  # noqa: SIM118
    assert keys == {f"diffusion_model.{m}.lora_{ab}.weight" for m in modules for ab in "AB"}
    assert_same_deltas(deltas(run_dir / "tiny.safetensors"), deltas(run_dir / "tiny.comfyui.safetensors"))


def test_save_precision_fp32_writes_float32(run_dir):
    assert _dtypes(run_dir / "tiny.safetensors") == {"F32"}
    assert _dtypes(run_dir / "tiny.comfyui.safetensors") == {"F32"}


@pytest.mark.parametrize(
    ("given", "dtype"),
    [
        (None, None),
        ("float", torch.float32),
        ("fp32", torch.float32),
        ("fp16", torch.float16),
        ("bf16", torch.bfloat16),
    ],
)
def test_save_precision_takes_musubi_tuners_names(given, dtype):
    assert SAVE_PRECISIONS == ("float", "fp32", "fp16", "bf16")
    assert parse_dtype(SavingOptions(save_precision=given).save_dtype, None) == dtype


def test_bf16_applies_to_both_files_with_alpha_folded_first(tmp_path):
    network = _trained(tiny_model())
    path = tmp_path / "x.safetensors"
    written = save_lora_files(network, path, torch.bfloat16, {"ss_network_dim": "4"}, comfyui=True)
    assert written == [path, comfyui_path(path)] and comfyui_path(path).name == "x.comfyui.safetensors"
    assert _dtypes(path) == {"BF16"}
    assert _dtypes(comfyui_path(path)) == {"BF16"}
    exact = {name: f.delta() for name, f in load_lora(path).weights.items()}
    for name, update in deltas(comfyui_path(path)).items():
        torch.testing.assert_close(update, exact[name], rtol=0.05, atol=1e-3)


# ComfyUI's HunyuanVideo model names its Linears the Flux way; its LoRA key map (comfy/lora.py,
# model_lora_keys_unet) takes `lora_unet_<its name, . -> _>` and `diffusion_model.` / `transformer.` +
# the original name. Ours -> ComfyUI's internal name:
COMFY_NAMES = [
    (r"_mlp\.fc1$", "_mlp.0"),
    (r"_mlp\.fc2$", "_mlp.2"),
    (r"_mod\.linear$", "_mod.lin"),
    (r"modulation\.linear$", "modulation.lin"),
    (r"_attn_qkv$", "_attn.qkv"),
    (r"_attn_proj$", "_attn.proj"),
]


def _comfy_keys(modules) -> set[str]:
    keys = set()
    for m in modules:
        internal = m
        for pattern, repl in COMFY_NAMES:
            internal = re.sub(pattern, repl, internal)
        keys |= {"lora_unet_" + internal.replace(".", "_"), f"diffusion_model.{m}", f"transformer.{m}"}
    return keys


def test_comfyui_maps_the_other_layout_whole_but_drops_mlp_and_modulation_of_the_default(run_dir):
    modules = set(load_lora(run_dir / "tiny.safetensors").weights)
    comfy = _comfy_keys(modules)
    dropped = {m for m in modules if "lora_unet_" + m.replace(".", "_") not in comfy}
    assert dropped and all(re.search(r"mlp|mod", m) for m in dropped)
    assert {m for m in modules if re.search(r"_mlp\.|_mod\.|modulation\.", m)} == dropped
    assert all(f"diffusion_model.{m}" in comfy for m in modules)


def test_the_run_report_names_the_comfyui_copies(run_dir):
    from run_report.data import written_files

    kinds = {path.name: kind for path, kind, _ in written_files(run_dir, "tiny", None)}
    assert kinds["tiny.safetensors"] == "LoRA (final)"
    assert kinds["tiny.comfyui.safetensors"] == kinds["tiny-step00000002.comfyui.safetensors"]
    assert "ComfyUI" in kinds["tiny.comfyui.safetensors"]
