"""--network_module networks.lokr / networks.loha / lycoris.kohya train the tiny demo end to end: the saved file
has musubi-tuner's key layout and our metadata, and a LoKr run resumed from its state ends where a straight
run ends (bit for bit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from demo_run import demo_argv
from safetensors import safe_open
from safetensors.torch import load_file

import hv_train_network


def _train(out: Path, *extra: str, steps: int = 2) -> int:
    # --network_args replaces the demo config's (which asks for LoRA+: refused by LoHa / LoKr)
    return hv_train_network.main(demo_argv(out, *extra, steps=steps))


def _file(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = out / "tiny_lora.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    return load_file(str(path)), metadata


def test_lokr_trains_and_resumes_bit_identically(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    common = ["--network_module", "networks.lokr", "--network_dim", "4", "--network_alpha", "2"]
    common += ["--network_args", "factor=4", "rank_dropout=0.1", "--save_every_n_steps", "2", "--save_state"]
    straight = tmp_path / "straight"
    assert _train(straight, *common, steps=4) == 0
    tensors, metadata = _file(straight)
    assert metadata["ss_network_module"] == "networks.lokr"
    p = "lora_unet_double_blocks_0_img_attn_qkv"  # 64 -> 192, factor 4: in (4, 16), out (4, 48)
    assert {k: tuple(v.shape) for k, v in tensors.items() if k.startswith(p + ".")} == {
        f"{p}.lokr_w1": (4, 4),
        f"{p}.lokr_w2_a": (48, 4),
        f"{p}.lokr_w2_b": (4, 16),
        f"{p}.alpha": (),
    }
    assert not any("mod" in k for k in tensors)  # modulation excluded by default, as networks.lora
    assert float(tensors[f"{p}.lokr_w2_b"].abs().sum()) > 0  # trained away from its zero init

    resumed = tmp_path / "resumed"
    state = straight / "tiny_lora-step00000002-state"
    assert _train(resumed, *common, "--resume", str(state), steps=4) == 0
    again, _ = _file(resumed)
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_loha_trains_with_musubi_tuners_keys(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "loha"
    args = ["--network_module", "networks.loha", "--network_args", "module_dropout=0.1", "--no_metadata"]
    assert _train(out, *args) == 0
    tensors, metadata = _file(out)
    assert metadata["ss_network_module"] == "networks.loha"  # --no_metadata keeps what a loader needs
    suffixes = {k.split(".", 1)[1] for k in tensors}
    assert suffixes == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
    assert len(tensors) == 5 * 20
    assert float(tensors["lora_unet_single_blocks_1_linear2.hada_w2_a"].abs().sum()) > 0


@pytest.mark.parametrize("algo", ["lokr"])
def test_lycoris_kohya_trains_and_saves_with_our_metadata(cached_demo, tmp_path, monkeypatch, algo):
    pytest.importorskip("lycoris.kohya", reason="lycoris-lora is not installed (pip install -e .[lycoris])")
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "lycoris"
    args = ["--network_module", "lycoris.kohya", "--network_args", f"algo={algo}", "factor=4"]
    assert _train(out, *args) == 0
    tensors, metadata = _file(out)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lokr_w1" in tensors
    assert any(k.endswith(".lokr_w2_b") and float(v.abs().sum()) > 0 for k, v in tensors.items())
