"""lora_files/io.py: a network saved and loaded round-trips bit-identically, alpha and bf16 travel, and a file of
another rank or other modules is a one-line error."""

from __future__ import annotations

import pytest
import torch
from lora_testing import normal_up_network as _trained_network
from lora_testing import tiny_model, tiny_network
from safetensors import safe_open

from lora_files.errors import LoRAFileError
from lora_files.io import load_network, save_network


def test_save_then_load_round_trips_bit_identically(tmp_path):
    model = tiny_model()
    saved = _trained_network(model, "alpha_patterns={r'.*linear1': 3}")
    path = tmp_path / "lora.safetensors"
    save_network(saved, str(path), metadata={"ss_network_dim": "4"})
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # no temporary left behind

    loaded = _trained_network(model, "alpha_patterns={r'.*linear1': 3}", seed=1)
    assert not torch.equal(loaded.loras[0].lora_down.weight, saved.loras[0].lora_down.weight)
    load_network(loaded, str(path))
    for (k, a), (k2, b) in zip(saved.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"ss_network_dim": "4"}
        keys = list(f.keys())
        assert "lora_unet_single_blocks_1_linear1.alpha" in keys
        assert float(f.get_tensor("lora_unet_single_blocks_1_linear1.alpha")) == 3.0


def test_loading_alpha_updates_the_scale(tmp_path):
    model = tiny_model()
    path = tmp_path / "a.safetensors"
    save_network(tiny_network(model, alpha=8.0), str(path))
    network = tiny_network(model, alpha=1.0)
    load_network(network, str(path))
    assert network.loras[0].scale == 8.0 / 4


def test_save_in_bf16(tmp_path):
    path = tmp_path / "bf16.safetensors"
    save_network(_trained_network(tiny_model()), str(path), dtype=torch.bfloat16)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}


def test_loading_a_file_of_another_rank_or_modules_is_a_one_line_error(tmp_path):
    model = tiny_model()
    path = tmp_path / "r8.safetensors"
    save_network(tiny_network(model, dim=8), str(path))
    with pytest.raises(LoRAFileError, match=r"shape \(8, 64\).*expects \(4, 64\)"):
        load_network(tiny_network(model, dim=4), str(path))
    with pytest.raises(LoRAFileError, match="0 keys missing, 12 unexpected"):
        load_network(tiny_network(model, "exclude_patterns=[r'.*single.*']", dim=8), str(path))
    with pytest.raises(LoRAFileError, match="not found"):
        load_network(tiny_network(model), str(tmp_path / "nope.safetensors"))
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(LoRAFileError, match="cannot read"):
        load_network(tiny_network(model), str(tmp_path / "torn.safetensors"))


def test_rank_and_alpha_come_from_the_file_for_dim_from_weights(tmp_path):
    from lora_files.io import rank_and_alpha

    path = tmp_path / "r8.safetensors"
    save_network(tiny_network(tiny_model(), dim=8, alpha=2.0), str(path))
    assert rank_and_alpha(path) == (8, 2.0)
    mixed = tmp_path / "mixed.safetensors"
    save_network(tiny_network(tiny_model(), "rank_patterns={r'.*single.*': 2}", dim=8), str(mixed))
    with pytest.raises(LoRAFileError, match=r"--dim_from_weights: .* ranks \[2, 8\]"):
        rank_and_alpha(mixed)


def test_dim_from_weights_builds_the_files_rank(cached_demo, tmp_path, monkeypatch):
    # Without it the config's rank 4 meets a rank-8 file: a one-line shape error; with it, it loads.
    from pathlib import Path

    from training.args import parse_args
    from training.run import build_run

    monkeypatch.chdir(cached_demo)
    lora = tmp_path / "r8.safetensors"
    demo = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_demo.toml")
    common = [
        "--config_file",
        demo,
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(tmp_path / "out"),
        "--network_dim",
        "8",
    ]
    save_network(build_run(parse_args(common)).network, str(lora))
    without = [a for a in common if a not in ("--network_dim", "8")] + ["--network_weights", str(lora)]
    with pytest.raises(LoRAFileError, match=r"has shape \(8, 64\), the network expects \(4, 64\)"):
        build_run(parse_args(without))
    run = build_run(parse_args([*without, "--dim_from_weights"]))
    assert {lora_module.lora_dim for lora_module in run.network.loras} == {8}
