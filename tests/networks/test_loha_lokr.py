"""networks/loha.py and networks/lokr.py on the tiny DiT (CPU): musubi-tuner's key layout and shapes (derived
from its loha.py / lokr.py: same names, same factor shapes for the same Linear), a fresh network changes
nothing, training changes the output, the network_args each module takes or refuses, the dropouts, and the
LoHa gradient (a hand-written backward) against plain autograd."""

from __future__ import annotations

import logging

import pytest
import torch
from lora_testing import NET_KW, meta_720p, tiny_inputs, tiny_model
from torch import nn

from networks import loha, lokr, lora
from networks.loha import HadamardWeight, LoHaModule
from networks.lokr import LoKrModule, factorization
from networks.network_args import NetworkArgsError

MODULES = {"loha": loha, "lokr": lokr}


def _network(module, model, *network_args: str, dim: int = 4, alpha: float = 2.0, **kw):
    return module.create_network(1.0, dim, alpha, model, network_args=list(network_args), **NET_KW, **kw)


# --- musubi-tuner's layout --------------------------------------------------------------------------------


def test_loha_keys_and_shapes_are_musubi_tuners():
    network = _network(loha, meta_720p(), dim=32, alpha=16, device="meta")
    sd = network.state_dict()
    p = "lora_unet_double_blocks_0_img_attn_qkv"  # a 3072 -> 9216 Linear
    assert {k: tuple(v.shape) for k, v in sd.items() if k.startswith(p + ".")} == {
        f"{p}.hada_w1_a": (9216, 32),
        f"{p}.hada_w1_b": (32, 3072),
        f"{p}.hada_w2_a": (9216, 32),
        f"{p}.hada_w2_b": (32, 3072),
        f"{p}.alpha": (),
    }
    assert float(sd[f"{p}.alpha"]) == 16.0
    assert len(network.loras) == 240  # the same selection as networks.lora (modulation excluded)


@pytest.mark.parametrize(
    ("dimension", "factor", "expected"),
    [(128, -1, (8, 16)), (512, -1, (16, 32)), (1024, -1, (32, 32)), (128, 4, (4, 32)), (512, 4, (4, 128)),
     (3072, -1, (48, 64)), (9216, -1, (96, 96)), (64, 3, (2, 32)), (128, 32, (4, 32)), (7, -1, (1, 7))],
)  # fmt: skip
def test_factorization_matches_musubi_tuners_examples(dimension, factor, expected):
    # the first five are musubi-tuner's docstring / docs examples; the rest follow its loop by hand
    assert factorization(dimension, factor) == expected


def test_lokr_keys_and_shapes_are_musubi_tuners_in_both_modes():
    network = _network(lokr, meta_720p(), dim=16, alpha=8, device="meta")
    sd = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    p = "lora_unet_double_blocks_0_img_attn_qkv"  # 3072 = 48 x 64 in, 9216 = 96 x 96 out: 16 < 96 / 2
    assert {k: v for k, v in sd.items() if k.startswith(p + ".")} == {
        f"{p}.lokr_w1": (96, 48),
        f"{p}.lokr_w2_a": (96, 16),
        f"{p}.lokr_w2_b": (16, 64),
        f"{p}.alpha": (),
    }
    four = _network(lokr, meta_720p(), "factor=4", dim=16, alpha=8, device="meta")
    q = "lora_unet_single_blocks_0_linear2"  # 15360 -> 3072; factor 4: in (4, 3840), out (4, 768)
    assert {k: tuple(v.shape) for k, v in four.state_dict().items() if k.startswith(q + ".")} == {
        f"{q}.lokr_w1": (4, 4),
        f"{q}.lokr_w2_a": (768, 16),
        f"{q}.lokr_w2_b": (16, 3840),
        f"{q}.alpha": (),
    }
    # a dim of at least half the larger w2 side: w2 is one full matrix and alpha becomes dim (scale 1)
    small = LoKrModule("t", nn.Linear(64, 64), lora_dim=4, alpha=2.0)  # 64 = 8 x 8: 4 >= 8 / 2
    assert small.full_w2 and tuple(small.lokr_w2.shape) == (8, 8)
    assert float(small.alpha) == 4.0 and small.scale == 1.0


def test_a_file_key_names_its_module_like_networks_lora():
    model = tiny_model()
    names = {k.split(".")[0] for k in lora.create_network(1.0, 4, 1, model, **NET_KW).state_dict()}
    for module in MODULES.values():
        assert {k.split(".")[0] for k in _network(module, model).state_dict()} == names


# --- behaviour on the tiny DiT ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["loha", "lokr", "lokr_full"])
def test_fresh_network_changes_nothing_and_one_step_changes_the_output(name):
    model, inputs = tiny_model(), tiny_inputs()
    base = model(**inputs)
    module = MODULES[name.split("_")[0]]
    network = _network(module, model, dim=8 if name == "lokr_full" else 2)
    network.apply_to(model)
    assert torch.equal(model(**inputs), base)  # musubi's zero init: hada_w2_a / lokr_w2(_b) are 0
    optimizer = torch.optim.AdamW(network.prepare_optimizer_params(1e-2))
    model(**inputs).square().mean().backward()
    optimizer.step()
    assert not torch.allclose(model(**inputs), base)
    assert all(p.grad is None for p in model.parameters())
    network.restore()
    assert torch.equal(model(**inputs), base)


def test_hadamard_backward_equals_plain_autograd():
    torch.manual_seed(0)
    factors = [torch.randn(s, dtype=torch.float64) for s in [(6, 3), (3, 5), (6, 3), (3, 5)]]
    mine = [f.clone().requires_grad_() for f in factors]
    plain = [f.clone().requires_grad_() for f in factors]
    grad = torch.randn(6, 5, dtype=torch.float64)
    HadamardWeight.apply(*mine, 0.5).backward(grad)
    ((plain[0] @ plain[1]) * (plain[2] @ plain[3]) * 0.5).backward(grad)
    for a, b in zip(mine, plain, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_forward_is_base_plus_the_delta_weight_times_multiplier():
    torch.manual_seed(0)
    linear = nn.Linear(16, 24).requires_grad_(False)
    x = torch.randn(2, 3, 16)
    for adapter in (LoHaModule("t", linear, 0.7, 4, 2.0), LoKrModule("t", linear, 0.7, 2, 2.0)):
        for p in adapter.parameters():
            nn.init.normal_(p)
        adapter.apply_to()
        expected = nn.functional.linear(x, linear.weight, linear.bias) + 0.7 * x @ adapter.diff_weight().T
        torch.testing.assert_close(linear(x), expected)
        adapter.restore()


@pytest.mark.parametrize("module", [loha, lokr])
def test_module_and_rank_dropout_act_only_in_training(module):
    torch.manual_seed(0)
    linear = nn.Linear(16, 24).requires_grad_(False)
    x = torch.randn(4, 16)
    net = nn.Module()
    adapter = (LoHaModule if module is loha else LoKrModule)("t", linear, 1.0, 2, 2.0, rank_dropout=0.5)
    for p in adapter.parameters():
        nn.init.normal_(p)
    net.add_module("a", adapter)
    adapter.apply_to()
    base = nn.functional.linear(x, linear.weight, linear.bias)
    net.eval()
    assert ((linear(x) - base).abs().sum(0) == 0).sum() == 0  # eval: no dropout
    net.train()
    dropped = ((linear(x) - base).abs().sum(0) == 0).sum()
    assert 0 < dropped < 24  # whole output rows (features) of ΔW dropped
    adapter.rank_dropout, adapter.module_dropout = None, 1.0 - 1e-9
    assert torch.equal(linear(x), nn.functional.linear(x, linear.weight, linear.bias))  # module skipped


# --- network_args: the same semantics, each module's own keys ---------------------------------------------


@pytest.mark.parametrize("module", [loha, lokr])
def test_exclude_include_rank_and_alpha_patterns_work_as_in_networks_lora(module):
    model = tiny_model()
    net = _network(
        module,
        model,
        "exclude_patterns=[r'.*single_blocks.*']",
        "include_patterns=[r'single_blocks\\.1\\.linear2']",
        "rank_patterns={r'.*img_attn_qkv': 3}",
        "alpha_patterns={r'.*img_attn_qkv': 1.5}",
    )
    names = net.module_names
    assert "single_blocks.1.linear2" in names and "single_blocks.0.linear1" not in names
    qkv = net.loras[names.index("double_blocks.0.img_attn_qkv")]
    assert qkv.lora_dim == 3 and float(qkv.alpha) == 1.5
    assert not any("mod" in n for n in names)  # the default exclusion (modulation) holds


@pytest.mark.parametrize("name", ["loha", "lokr"])
def test_verbose_logs_each_module(name, caplog):
    with caplog.at_level(logging.INFO, logger="networks.base"):
        _network(MODULES[name], tiny_model(), "verbose=True")
    assert f"{name} double_blocks.0.img_attn_qkv: in=64 out=192 dim=4 alpha=2" in caplog.text
    assert "20 modules wrapped, 6 excluded" in caplog.text


def test_lokr_factor_changes_the_split_and_is_checked():
    model = tiny_model()
    default = _network(lokr, model).state_dict()["lora_unet_double_blocks_0_img_attn_qkv.lokr_w1"]
    four = _network(lokr, model, "factor=4").state_dict()["lora_unet_double_blocks_0_img_attn_qkv.lokr_w1"]
    assert tuple(default.shape) == (12, 8) and tuple(four.shape) == (4, 4)
    for bad in ("factor=0", "factor=-2", "factor=2.5", "factor='4'"):
        with pytest.raises(NetworkArgsError, match="factor"):
            _network(lokr, model, bad)


@pytest.mark.parametrize(
    ("module", "item", "fragment"),
    [
        (loha, "loraplus_lr_ratio=4", "LoRA\\+ needs LoRA's up/down pair"),
        (lokr, "loraplus_lr_ratio=4", "LoRA\\+ needs LoRA's up/down pair"),
        (loha, "factor=4", "factor is for networks.lokr"),
        (lora, "factor=4", "factor is for networks.lokr"),
        (lokr, "algo=lokr", "unknown key 'algo'"),
    ],
)
def test_each_module_refuses_the_keys_it_cannot_honour_in_one_line(module, item, fragment):
    with pytest.raises(NetworkArgsError, match=fragment) as e:
        module.create_network(1.0, 4, 1, tiny_model(), network_args=[item], **NET_KW)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("module", [loha, lokr])
def test_network_dropout_is_refused_where_nothing_would_read_it(module):
    with pytest.raises(NetworkArgsError, match="--network_dropout 0.1: networks.lo.. has no rank-r"):
        _network(module, tiny_model(), neuron_dropout=0.1)


@pytest.mark.parametrize("module", [loha, lokr])
def test_max_norm_scales_each_delta_weight_down_to_the_limit(module):
    net = _network(module, tiny_model(), dim=2)
    for p in net.parameters():
        nn.init.normal_(p)
    before = [float(lora.diff_weight().detach().norm()) for lora in net.loras]
    limit = sorted(before)[len(before) // 2]  # half the modules are above it
    figures = net.apply_max_norm_regularization(limit, torch.device("cpu"))
    scaled, mean, largest = figures.keys_scaled, figures.average_key_norm, figures.max_key_norm
    after = [float(lora.diff_weight().detach().norm()) for lora in net.loras]
    assert scaled == sum(b > limit for b in before) > 0
    assert largest == pytest.approx(limit, rel=1e-4) and mean <= limit
    for b, a in zip(before, after, strict=True):
        assert a == pytest.approx(min(b, limit), rel=1e-4)
