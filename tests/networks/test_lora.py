"""networks/lora.py: the LoRA itself on the tiny DiT (CPU): output and gradients, autocast, multiplier, dropouts,
the LoRA+ optimizer groups, dim and alpha checks, two networks on one model (which modules: test_selection.py)."""

from __future__ import annotations

import math

import pytest
import torch
from lora_testing import NET_KW, meta_720p, tiny_inputs, tiny_model, tiny_network
from lora_testing import normal_up_network as _trained_network
from torch import nn

from networks.lora import LoRAModule, create_network
from networks.network_args import NetworkArgsError

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
