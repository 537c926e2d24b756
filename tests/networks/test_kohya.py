"""networks/kohya.py: a foreign --network_module is called exactly as musubi-tuner's trainer calls it (a fake
module records the calls), and LyCORIS (`lycoris.kohya`, when installed) builds LoKr / LoHa on the tiny DiT
behind the same interface as our networks."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from lora_testing import NET_KW, tiny_inputs, tiny_model
from torch import nn

from networks.build import build_network, load_network_module
from networks.lora import LoRAModule, create_network, lora_name_for
from networks.network_args import NetworkArgsError
from networks.options import NetworkOptions


class FakeKohyaNetwork(nn.Module):
    """The kohya interface, with LoRAModules on every Linear of the first double block."""

    def __init__(self, unet: nn.Module, calls: list) -> None:
        super().__init__()
        self.calls = calls
        self.unet_loras = [
            LoRAModule(lora_name_for(n), m, lora_dim=2)
            for n, m in unet.named_modules()
            if n.startswith("double_blocks.0.") and isinstance(m, nn.Linear)
        ]

    def prepare_network(self, args):
        self.calls.append(("prepare_network", getattr(args, "learning_rate", None)))

    def apply_to(self, text_encoder, unet, apply_text_encoder=None, apply_unet=None):
        self.calls.append(("apply_to", text_encoder, apply_text_encoder, apply_unet))
        for lora in self.unet_loras:
            lora.apply_to()
            self.add_module(lora.lora_name, lora)

    def prepare_optimizer_params(self, unet_lr=None, **kwargs):
        self.calls.append(("prepare_optimizer_params", unet_lr, kwargs))
        ups = [lora.lora_up.weight for lora in self.unet_loras]
        downs = [lora.lora_down.weight for lora in self.unet_loras]
        return [{"params": downs, "lr": unet_lr}, {"params": ups, "lr": unet_lr * 8}], ["unet", "unet plus"]

    def set_multiplier(self, multiplier):
        for lora in self.unet_loras:
            lora.multiplier = multiplier


def _fake_module(monkeypatch, *, arch: bool, prepare: bool = True) -> list:
    calls: list = []
    module = types.ModuleType("fake_kohya")

    def create(multiplier, dim, alpha, vae, text_encoders, unet, **kwargs):
        calls.append(("create", multiplier, dim, alpha, vae, text_encoders, kwargs))
        return FakeKohyaNetwork(unet, calls)

    if arch:
        module.create_arch_network = create  # type: ignore[attr-defined]
    else:
        module.create_network = create  # type: ignore[attr-defined]
    if prepare:
        module.prepare_network = lambda: None  # type: ignore[attr-defined]  (musubi-tuner only asks if it is there)
    monkeypatch.setitem(sys.modules, "fake_kohya", module)
    return calls


def _build(options: NetworkOptions, model=None, **kw):
    return build_network(options, model if model is not None else tiny_model(), "cpu", **NET_KW, **kw)


def test_create_network_gets_the_network_args_as_strings_like_musubi_tuner(monkeypatch):
    calls = _fake_module(monkeypatch, arch=False)
    options = NetworkOptions(
        network_module="fake_kohya",
        network_dim=8,
        network_alpha=4.0,
        network_args=("algo=lokr", "factor=4", "preset=attn-mlp", "exclude_patterns=[r'.*x.*']"),
    )
    model = tiny_model()
    network = _build(options, model, run_options={"learning_rate": 0.5})
    create = calls[0]
    assert create[:6] == ("create", 1.0, 8, 4.0, None, None)
    assert create[6] == {
        "algo": "lokr",
        "factor": "4",
        "preset": "attn-mlp",
        "exclude_patterns": "[r'.*x.*']",
    }
    assert calls[1] == ("prepare_network", 0.5)
    assert calls[2] == ("apply_to", None, False, True)  # applied at once, to the DiT only
    groups = network.prepare_optimizer_params(1e-3)
    assert calls[3] == ("prepare_optimizer_params", 1e-3, {})
    assert [(g["kind"], g["lr"], len(g["params"])) for g in groups] == [
        ("lora", 1e-3, 10),
        ("lora_plus", 8e-3, 10),
    ]
    # the foreign network's own keys, as its save_weights would write them
    assert sorted(network.state_dict()) == sorted(network.inner.state_dict())
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in network.state_dict()
    qkv = {t.name: t for t in network.targets()}["double_blocks.0.img_attn_qkv"]
    assert (qkv.in_features, qkv.out_features, qkv.dim, qkv.params) == (64, 192, 2, 2 * (64 + 192))
    network.apply_to(model)  # already applied: only checks the model
    with pytest.raises(ValueError, match="built for another model"):
        network.apply_to(tiny_model())


def test_create_arch_network_is_preferred_and_gets_neuron_dropout(monkeypatch):
    calls = _fake_module(monkeypatch, arch=True, prepare=False)
    _build(NetworkOptions(network_module="fake_kohya", network_dropout=0.1, network_args=("k=v",)))
    assert calls[0][6] == {"neuron_dropout": 0.1, "k": "v"}
    assert [c[0] for c in calls] == ["create", "apply_to"]  # no module-level prepare_network: not called


def test_network_dropout_that_create_network_cannot_take_is_refused(monkeypatch):
    _fake_module(monkeypatch, arch=False)
    with pytest.raises(NetworkArgsError, match="--network_dropout: fake_kohya has no create_arch_network"):
        _build(NetworkOptions(network_module="fake_kohya", network_dropout=0.1))


def test_foreign_args_are_not_checked_by_us_but_must_be_key_value(monkeypatch):
    _fake_module(monkeypatch, arch=False)
    _build(NetworkOptions(network_module="fake_kohya", network_args=("anything_goes=[1,",)))
    with pytest.raises(NetworkArgsError, match="expected key=value"):
        _build(NetworkOptions(network_module="fake_kohya", network_args=("novalue",)))


def test_a_module_without_the_interface_is_one_line():
    with pytest.raises(NetworkArgsError, match="neither create_network"):
        load_network_module("json")
    with pytest.raises(NetworkArgsError, match="cannot import it"):
        load_network_module("no_such_module_here")


# --- LyCORIS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "keys"), [("lokr", {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}), ("loha", {"hada_w1_a", "hada_w2_b"})]
)
def test_lycoris_builds_on_the_tiny_dit_and_trains(algo, keys):
    pytest.importorskip("lycoris.kohya", reason="lycoris-lora is not installed (the [lycoris] extra)")
    model, inputs = tiny_model(), tiny_inputs()
    base = model(**inputs)
    options = NetworkOptions(
        network_module="lycoris.kohya",
        network_dim=4,
        network_alpha=2.0,
        network_args=(f"algo={algo}", "factor=4"),
    )
    network = _build(options, model)
    assert torch.equal(model(**inputs), base)  # a fresh LyCORIS module changes nothing either
    suffixes = {k.split(".", 1)[1] for k in network.state_dict()}
    assert keys <= suffixes and "alpha" in suffixes
    assert "double_blocks.0.img_attn_qkv" in network.module_names
    optimizer = torch.optim.AdamW(network.prepare_optimizer_params(1e-2))
    model(**inputs).square().mean().backward()
    optimizer.step()
    assert not torch.allclose(model(**inputs), base)
    network.set_multiplier(0.0)
    torch.testing.assert_close(model(**inputs), base)


def test_lycoris_preset_from_the_docs_selects_what_networks_lora_selects(tmp_path):
    pytest.importorskip("lycoris.kohya", reason="lycoris-lora is not installed (the [lycoris] extra)")
    text = (Path(__file__).resolve().parents[2] / "docs" / "network_args.md").read_text(encoding="utf-8")
    preset = tmp_path / "hv_lycoris_preset.toml"
    preset.write_text(
        text.split("# hv_lycoris_preset.toml")[1].split("\n", 1)[1].split("```")[0], encoding="utf-8"
    )
    model = tiny_model()
    default = _build(NetworkOptions(network_module="lycoris.kohya", network_args=("algo=lokr",)), model)
    assert any("mod" in n for n in default.module_names)  # LyCORIS's full preset wraps modulation too
    with_preset = _build(
        NetworkOptions(network_module="lycoris.kohya", network_args=("algo=lokr", f"preset={preset}")),
        tiny_model(),
    )
    ours = create_network(1.0, 4, 1.0, tiny_model(), **NET_KW)
    assert sorted(with_preset.module_names) == sorted(ours.module_names)
    with pytest.raises(NetworkArgsError, match="refused --network_args algo=lokr preset=/no/such.toml"):
        _build(
            NetworkOptions(network_module="lycoris.kohya", network_args=("algo=lokr", "preset=/no/such.toml"))
        )
