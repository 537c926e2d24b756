"""networks/lora.py: target selection on the 720p layout (meta), and the LoRA itself on the tiny DiT (CPU)."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch
from lora_testing import NET_KW, meta_720p, network_720p, tiny_inputs, tiny_model, tiny_network
from safetensors import safe_open
from torch import nn

from lora_files.errors import LoRAFileError
from lora_files.io import load_network, save_network
from networks.lora import LoRAModule, create_network
from networks.network_args import NetworkArgsError

SINGLE_10_ON = r"include_patterns=[r'.*single_blocks\.\d{2}\.linear.*']"

# --- selection on the full 720p layout --------------------------------------------------------------------


def test_default_selection_is_240_modules_without_modulation():
    network = network_720p()
    names = network.module_names
    assert len(names) == 240
    assert not any(re.search("img_mod|txt_mod|modulation", n) for n in names)
    assert names[:4] == [
        "double_blocks.0.img_attn_qkv",
        "double_blocks.0.img_attn_proj",
        "double_blocks.0.img_mlp.fc1",
        "double_blocks.0.img_mlp.fc2",
    ]
    assert len(network.selection.excluded) == 80  # 2 x 20 img/txt_mod + 40 modulation
    assert not any(n.startswith(("txt_in", "time_in", "final_layer")) for n in names)


def test_seed_examples_give_160_and_60():
    assert len(network_720p("exclude_patterns=[r'.*single_blocks.*']").loras) == 160
    network = network_720p("exclude_patterns=[r'.*']", SINGLE_10_ON)
    assert len(network.loras) == 60
    assert network.module_names[0] == "single_blocks.10.linear1"
    assert all(int(n.split(".")[1]) >= 10 for n in network.module_names)


def test_loraplus_gives_two_groups_of_240_at_lr_and_lr_times_ratio():
    groups = network_720p("loraplus_lr_ratio=4").prepare_optimizer_params(1e-4)
    assert [(g["kind"], g["lr"], len(g["params"])) for g in groups] == [
        ("lora", 1e-4, 240),
        ("lora_plus", 4e-4, 240),
    ]


def test_without_loraplus_one_group_holds_every_weight():
    groups = network_720p().prepare_optimizer_params(1e-4)
    assert [(g["kind"], g["lr"], len(g["params"])) for g in groups] == [("lora", 1e-4, 480)]


def test_include_rescues_modulation_layers():
    network = network_720p(r"include_patterns=[r'.*double_blocks\.\d+\.img_mod\.linear']")
    assert len(network.loras) == 260
    assert "double_blocks.7.img_mod.linear" in network.module_names
    assert "double_blocks.7.txt_mod.linear" not in network.module_names


def test_include_never_restricts():
    network = network_720p(r"include_patterns=[r'single_blocks\.0\.linear1']")
    assert len(network.loras) == 240


def test_exclude_then_include_mixed_with_other_keys():
    network = network_720p(
        "exclude_patterns=[r'.*single_blocks.*', r'.*double_blocks\\.[0-9]\\..*']",
        r"include_patterns=[r'single_blocks\.39\..*']",
        "loraplus_lr_ratio=2",
        "verbose=False",
    )
    # double blocks 10-19 (80) + single block 39: linear1, linear2 and its modulation (rescued) = 83
    assert len(network.loras) == 83
    assert "single_blocks.39.modulation.linear" in network.module_names
    assert "double_blocks.9.img_attn_qkv" not in network.module_names


def test_partial_pattern_matches_nothing_and_warns_with_the_fix(caplog):
    with caplog.at_level(logging.WARNING):
        network = network_720p("exclude_patterns=['single_blocks']")
    assert len(network.loras) == 240  # full match: 'single_blocks' is no module's whole name
    assert "'single_blocks'" in caplog.text
    assert "r'.*single_blocks.*'" in caplog.text


def test_pattern_matching_nothing_names_the_closest_modules(caplog):
    with caplog.at_level(logging.WARNING):
        network_720p("include_patterns=[r'double_blocks\\.0\\.img_atn_qkv']")
    assert "img_atn_qkv" in caplog.text
    assert "closest module names: double_blocks.0.img_attn_qkv" in caplog.text


def test_a_selection_that_wraps_nothing_is_an_error():
    with pytest.raises(NetworkArgsError, match="wraps no module"):
        network_720p("exclude_patterns=[r'.*']")


def test_a_model_without_target_blocks_is_an_error():
    with pytest.raises(NetworkArgsError, match="no Linear inside blocks of class"):
        create_network(1.0, 4, 1.0, nn.Sequential(nn.Linear(4, 4)), **NET_KW)


def test_per_pattern_rank_and_alpha_first_match_wins():
    network = network_720p(
        "rank_patterns={r'.*linear1': 8, r'.*single_blocks.*': 4, r'.*linear2': 64}",
        "alpha_patterns={r'.*single_blocks.*': 2}",
        dim=32,
        alpha=16,
    )
    loras = dict(zip(network.module_names, network.loras, strict=True))
    assert (loras["single_blocks.3.linear1"].lora_dim, loras["single_blocks.3.linear2"].lora_dim) == (8, 4)
    assert loras["double_blocks.3.img_mlp.fc1"].lora_dim == 32
    assert float(loras["single_blocks.3.linear2"].alpha) == 2.0
    assert loras["single_blocks.3.linear2"].scale == 2.0 / 4
    assert loras["double_blocks.3.img_mlp.fc1"].scale == 16.0 / 32
    assert tuple(loras["single_blocks.3.linear1"].lora_down.weight.shape) == (8, 3072)


def test_selection_knows_block_class_names_not_hunyuan_video():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.gate = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    model = nn.ModuleDict({"blocks": nn.ModuleList([Attention(), Attention()]), "head": nn.Linear(8, 8)})
    network = create_network(
        1.0, 2, 1.0, model, target_block_classes=("Attention",), default_exclude_patterns=(r".*gate",)
    )
    assert network.module_names == ["blocks.0.q", "blocks.0.k", "blocks.1.q", "blocks.1.k"]


def test_verbose_logs_modules_exclusions_and_groups(caplog):
    with caplog.at_level(logging.INFO, logger="networks"):
        network = network_720p("verbose=True", "loraplus_lr_ratio=4")
        network.prepare_optimizer_params(1e-4)
    text = caplog.text
    assert "lora double_blocks.0.img_attn_qkv: in=3072 out=9216 dim=32 alpha=16" in text
    assert "excluded double_blocks.0.img_mod.linear by '.*(img_mod|txt_mod|modulation).*'" in text
    assert "param group lora_plus: lr=0.0004, 240 tensors" in text


def test_lora_names_and_file_keys():
    network = network_720p()
    keys = set(network.state_dict())
    assert len(keys) == 3 * 240
    assert "lora_unet_double_blocks_0_img_mlp_fc1.lora_down.weight" in keys
    assert "lora_unet_single_blocks_39_linear2.lora_up.weight" in keys
    assert "lora_unet_single_blocks_39_linear2.alpha" in keys


# --- the LoRA on the tiny DiT -------------------------------------------------------------------------------


def _forward(model, inputs):
    return model(**inputs)


def test_applying_changes_neither_the_output_nor_the_model_keys():
    model = tiny_model()
    inputs = tiny_inputs()
    base = _forward(model, inputs)
    keys = list(model.state_dict())
    network = tiny_network(model)
    network.apply_to(model)
    assert torch.equal(_forward(model, inputs), base)  # lora_up is zero
    assert list(model.state_dict()) == keys
    assert len(network.loras) == 20


def test_one_step_changes_only_lora_parameters_and_the_output():
    model = tiny_model()
    inputs = tiny_inputs()
    base_out = _forward(model, inputs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    network = tiny_network(model)
    network.apply_to(model)
    lora_before = {k: v.clone() for k, v in network.state_dict().items()}
    optimizer = torch.optim.AdamW(network.prepare_optimizer_params(1e-2))
    _forward(model, inputs).square().mean().backward()
    optimizer.step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    changed = [k for k, v in network.state_dict().items() if not torch.equal(v, lora_before[k])]
    assert any(k.endswith("lora_up.weight") for k in changed)
    assert not any(k.endswith(".alpha") for k in changed)
    assert not torch.allclose(_forward(model, inputs), base_out)


def test_gradients_match_a_plain_reference_for_2d_3d_and_4d_inputs():
    torch.manual_seed(0)
    for shape in [(5, 16), (2, 3, 16), (2, 3, 4, 16)]:
        linear = nn.Linear(16, 24).requires_grad_(False)
        lora = LoRAModule("t", linear, multiplier=0.7, lora_dim=4, alpha=2.0)
        nn.init.normal_(lora.lora_up.weight)
        lora.apply_to()
        x = torch.randn(*shape, requires_grad=True)
        params = [x, lora.lora_down.weight, lora.lora_up.weight]
        out = linear(x)
        ref = (
            x @ linear.weight.T
            + linear.bias
            + 0.7 * (2.0 / 4) * (x @ lora.lora_down.weight.T) @ lora.lora_up.weight.T
        )
        g = torch.randn_like(ref)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref)
        for a, b in zip(
            torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g), strict=True
        ):
            torch.testing.assert_close(a, b)


def test_a_subclassed_linear_gets_the_out_of_place_path_with_the_same_result():
    class PatchedLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x)

    torch.manual_seed(0)
    plain, patched = nn.Linear(8, 8), PatchedLinear(8, 8)
    patched.load_state_dict(plain.state_dict())
    results = []
    for linear in (plain, patched):
        torch.manual_seed(1)
        lora = LoRAModule("t", linear, lora_dim=2)
        nn.init.ones_(lora.lora_up.weight)
        lora.apply_to()
        results.append(linear(torch.ones(3, 8)))
    assert torch.equal(results[0], results[1])


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        model.enable_gradient_checkpointing(checkpointing)
        torch.manual_seed(3)
        network = tiny_network(model)
        for lora in network.loras:
            nn.init.normal_(lora.lora_up.weight, std=0.1)
        network.apply_to(model)
        _forward(model, tiny_inputs()).square().mean().backward()
        grads.append([p.grad.clone() for g in network.prepare_optimizer_params(1.0) for p in g["params"]])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_autocast_and_bf16_base_weights_work_with_fp32_lora():
    model = tiny_model()
    network = tiny_network(model)
    for lora in network.loras:
        nn.init.normal_(lora.lora_up.weight, std=0.1)
    network.apply_to(model)
    inputs = tiny_inputs()
    reference = _forward(model, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _forward(model, inputs)
    out.float().square().mean().backward()
    assert network.loras[0].lora_up.weight.grad is not None
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.1)
    model.to(torch.bfloat16)
    bf16_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_inputs().items()}
    assert _forward(model, bf16_inputs).dtype == torch.bfloat16


def test_multiplier_scales_the_update_and_restore_removes_it():
    model = tiny_model()
    linear = model.double_blocks[0].img_attn_proj
    x = torch.randn(2, 3, 64)
    base = linear(x)
    network = tiny_network(model)
    for lora in network.loras:
        nn.init.normal_(lora.lora_up.weight)
    network.apply_to(model)
    delta = linear(x) - base
    network.set_multiplier(2.0)
    torch.testing.assert_close(linear(x) - base, 2 * delta)
    network.set_multiplier(0.0)
    assert torch.equal(linear(x), base)
    network.restore()
    network.set_multiplier(1.0)
    assert torch.equal(linear(x), base)


def test_dropouts_act_only_in_training_mode():
    model = tiny_model()
    linear, x = model.single_blocks[0].linear2, torch.randn(2, 3, 64 * 5)
    base = linear(x)
    network = tiny_network(model, "module_dropout=0.999999", "rank_dropout=0.5", neuron_dropout=0.5)
    for lora in network.loras:
        nn.init.normal_(lora.lora_up.weight)
    network.apply_to(model)
    network.eval()
    eval_out = linear(x)
    assert not torch.equal(eval_out, base)
    assert torch.equal(linear(x), eval_out)  # no dropout of any kind in eval mode
    network.train()
    assert torch.equal(linear(x), base)  # the whole module is dropped (p = 0.999999)


def test_rank_dropout_drops_whole_ranks_per_sample():
    linear = nn.Linear(6, 5, bias=False)
    nn.init.zeros_(linear.weight)
    lora = LoRAModule("t", linear, lora_dim=64, alpha=64, rank_dropout=0.5)
    nn.init.ones_(lora.lora_up.weight)
    lora.apply_to()
    torch.manual_seed(0)
    out = linear(torch.ones(2, 7, 6))
    # each sample keeps its own ranks: the same for all its tokens, different between the two samples
    assert torch.equal(out[0, 0], out[0, 6]) and not torch.equal(out[0], out[1])


def test_apply_to_another_model_is_refused():
    network = tiny_network(tiny_model())
    with pytest.raises(ValueError, match="another model"):
        network.apply_to(tiny_model())


# --- files ---------------------------------------------------------------------------------------------------


def _trained_network(model, *args: str, seed: int = 0):
    torch.manual_seed(seed)
    network = tiny_network(model, *args)
    for lora in network.loras:
        nn.init.normal_(lora.lora_up.weight)
    return network


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


# --- the optimizer --------------------------------------------------------------------------------------------


def test_loraplus_group_really_steps_lora_up_at_lr_times_ratio():
    model = tiny_model()
    network = _trained_network(model, "loraplus_lr_ratio=4")
    network.apply_to(model)
    optimizer = torch.optim.SGD(network.prepare_optimizer_params(0.01))
    assert [(g["kind"], g["lr"]) for g in optimizer.param_groups] == [("lora", 0.01), ("lora_plus", 0.04)]
    ups = {id(lora.lora_up.weight) for lora in network.loras}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == ups
    assert not ups & {id(p) for p in optimizer.param_groups[0]["params"]}
    _forward(model, tiny_inputs()).square().mean().backward()
    up, down = network.loras[0].lora_up.weight, network.loras[0].lora_down.weight
    expected_up, expected_down = up - 0.04 * up.grad, down - 0.01 * down.grad
    optimizer.step()
    torch.testing.assert_close(up, expected_up, rtol=0, atol=1e-7)
    torch.testing.assert_close(down, expected_down, rtol=0, atol=1e-7)


def test_network_dim_and_alpha_are_checked():
    with pytest.raises(NetworkArgsError, match="network_dim=0"):
        tiny_network(tiny_model(), dim=0)
    with pytest.raises(NetworkArgsError, match="network_alpha=-1"):
        tiny_network(tiny_model(), alpha=-1)
    assert math.isclose(
        create_network(1.0, None, None, meta_720p(), device="meta", **NET_KW).loras[0].scale, 1 / 4
    )


def test_two_networks_on_one_model_add_up():
    model = tiny_model()
    linear, x = model.double_blocks[0].img_mlp.fc1, torch.randn(2, 3, 64, requires_grad=True)
    base = linear(x)
    first, second = _trained_network(model, seed=1), _trained_network(model, seed=2)
    first.apply_to(model)
    delta1 = linear(x) - base
    second.apply_to(model)
    assert not second.loras[0]._inplace  # stacked on a patched forward: no in-place accumulation
    out = linear(x)
    second.restore()
    delta2 = out - base - delta1
    first.restore()
    second.apply_to(model)
    torch.testing.assert_close(delta2, linear(x) - base)
    out.sum().backward()  # autograd accepts the stacked forward
    assert first.loras[2].lora_up.weight.grad is not None
