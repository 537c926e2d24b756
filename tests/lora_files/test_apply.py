"""lora_files/apply.py: a LoRA applied on the fly computes what the same LoRA merged into the DiT computes."""

from __future__ import annotations

import json

import torch
from lora_file_testing import ALPHA, DIM
from lora_testing import tiny_inputs, tiny_network
from safetensors import safe_open

import merge_lora
from hunyuan_model.checkpoint import load_dit
from lora_files.apply import apply_on_the_fly, restore_all
from lora_files.io import load_lora, load_network

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
