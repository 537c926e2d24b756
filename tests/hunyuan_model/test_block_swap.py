"""Block swap (hunyuan_model/block_swap.py) on the CPU: same loss and LoRA gradients as without it, with and
without gradient checkpointing, fp8 weights and no_grad; a broken schedule fails loudly; the trainer's CPU no-op."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import pytest
import torch
from lora_testing import applied_random_network, tiny_inputs
from safetensors.torch import load_file

from hunyuan_model.config import PRESETS
from hunyuan_model.fp8 import FP8_DTYPE, quantize_linears
from hunyuan_model.model import build_dit

# 3 double + 4 single blocks: N = 1, 3 and 5 (the most) swap single blocks only, double and single, almost all
CFG = dataclasses.replace(PRESETS["tiny"], name="tiny7", mm_double_blocks_depth=3, mm_single_blocks_depth=4)
TOTAL = 7


def _model(ckpt: bool = False, fp8: bool = False):
    torch.manual_seed(0)
    model = build_dit(CFG, device="cpu", dtype=torch.float32).requires_grad_(False)
    if fp8:
        quantize_linears(model, scaled=True)
    net = applied_random_network(model)
    if ckpt:
        model.enable_gradient_checkpointing()
    return model, net


def _step(model, net, grad: bool = True):
    with torch.set_grad_enabled(grad):
        out = model(**tiny_inputs())
        loss = out.square().mean()
    if grad:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), loss.detach(), grads


@functools.cache
def _reference(ckpt: bool, fp8: bool = False, grad: bool = True):
    model, net = _model(ckpt, fp8)
    return _step(model, net, grad)


def _assert_same(a, b) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_swap_gives_the_same_loss_and_lora_gradients(n, ckpt):
    ref = _reference(ckpt)
    assert len(ref[2]) == 2 * (3 * 8 + 4 * 2) and all(g.abs().max() > 0 for g in ref[2].values())
    model, net = _model(ckpt)
    swapper = model.enable_block_swap(n, "cpu")
    got = _step(model, net)
    _assert_same(got, ref)
    # forward loads every swapped block once; backward all but the last, which forward kept for it
    last = TOTAL - 1
    assert swapper.stats.loads == 2 * n - 1
    assert swapper.stats.bytes_to_device == 2 * swapper.swapped_bytes - swapper.block_bytes(last) > 0
    assert swapper.stats.max_resident == min(n, 2)
    assert swapper.resident_blocks() == []  # the end-of-backward callback offloaded everything


def test_second_step_is_the_same_as_the_first():
    model, net = _model()
    swapper = model.enable_block_swap(5, "cpu")
    _step(model, net)
    net.zero_grad(set_to_none=True)
    swapper.stats.reset()
    _assert_same(_step(model, net), _reference(False))
    assert swapper.stats.loads == 9


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
def test_fp8_weights_swap_unchanged(ckpt):
    model, net = _model(ckpt, fp8=True)
    weight = model.single_blocks[-1].linear1.weight
    assert weight.dtype == FP8_DTYPE and model.single_blocks[-1].linear1.scale_weight is not None
    swapper = model.enable_block_swap(5, "cpu")
    assert weight.dtype == FP8_DTYPE and weight.numel() == 0  # offloaded: an empty fp8 placeholder
    _assert_same(_step(model, net), _reference(ckpt, fp8=True))
    assert swapper.stats.loads == 9
    state = model.state_dict()
    assert state["single_blocks.3.linear1.weight"].dtype == FP8_DTYPE
    assert state["single_blocks.3.linear1.weight"].shape == (CFG.hidden_size * 3 + CFG.mlp_hidden_dim, 64)


def test_no_grad_inference_is_unchanged_and_offloads_every_block():
    ref = _reference(False, grad=False)
    model, net = _model()
    swapper = model.enable_block_swap(5, "cpu")
    for _ in range(2):  # sampling runs many forwards
        swapper.stats.reset()
        got = _step(model, net, grad=False)
        assert torch.equal(got[0], ref[0])
        assert swapper.stats.loads == 5 and swapper.stats.max_resident == 2
        assert swapper.resident_blocks() == []


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
def test_backward_reads_the_weights_resident_at_backward_time(ckpt):
    """Nothing from forward pins a swapped block's device copy: what backward reads is loaded again.

    The CPU master of the first swapped block changes between forward and backward: the gradients of the
    LoRA weights before it (reached through its weights) change, those after it do not.
    """
    ref = _reference(ckpt)
    model, net = _model(ckpt)
    swapper = model.enable_block_swap(3, "cpu")  # blocks 4, 5, 6 = single blocks 1, 2, 3
    with torch.set_grad_enabled(True):
        loss = model(**tiny_inputs()).square().mean()
    with torch.no_grad():
        model.single_blocks[1].state_dict()["linear2.weight"].mul_(2.0)  # the master: the block is offloaded
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert torch.equal(loss, ref[1])
    assert not torch.equal(
        grads["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"],
        ref[2]["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"],
    )
    assert torch.equal(
        grads["lora_unet_single_blocks_3_linear2.lora_up.weight"],
        ref[2]["lora_unet_single_blocks_3_linear2.lora_up.weight"],
    )
    assert swapper.stats.loads == 5


def test_calling_an_offloaded_block_fails_loudly():
    model, _ = _model()
    model.enable_block_swap(2, "cpu")
    tokens = torch.randn(1, 12, CFG.hidden_size)
    vec = torch.randn(1, CFG.hidden_size)
    rope = (torch.ones(8, CFG.head_dim), torch.zeros(8, CFG.head_dim))
    with pytest.raises(RuntimeError):
        model.single_blocks[-1](tokens, vec, 8, None, rope)
    model.single_blocks[0](tokens, vec, 8, None, rope)  # a resident block runs


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
def test_a_backward_that_skips_the_loads_fails_loudly(ckpt, monkeypatch):
    model, net = _model(ckpt)
    swapper = model.enable_block_swap(3, "cpu")
    monkeypatch.setattr(swapper, "before_backward", lambda index: None)  # the broken schedule: no loads
    loss = model(**tiny_inputs()).square().mean()
    with pytest.raises(RuntimeError, match=None if ckpt else "CPU memory"):
        loss.backward()


@pytest.mark.parametrize("n", [-1, TOTAL - 1, 100])
def test_n_out_of_range_is_one_line_naming_the_range(n):
    model, _ = _model()
    with pytest.raises(ValueError, match=r"allowed 0 to 5") as info:
        model.enable_block_swap(n, "cpu")
    assert "\n" not in str(info.value) and f"blocks_to_swap {n}" in str(info.value)


def test_zero_and_max_are_accepted_and_state_dict_and_disable_restore_everything():
    model, net = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.enable_block_swap(0, "cpu") is None and model.block_swap is None
    model.enable_block_swap(TOTAL - 2, "cpu")
    after = model.state_dict()  # swapped blocks show their CPU masters, not the empty placeholders
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    model.disable_block_swap()
    assert model.block_swap is None and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    _assert_same(_step(model, net), _reference(False))


def test_trainable_block_weights_are_refused():
    model, _ = _model()
    model.single_blocks[-1].linear2.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        model.enable_block_swap(1, "cpu")


# ---------------------------------------------------------------- the trainer on the CPU

ROOT = Path(__file__).resolve().parents[2]


def _train(out: Path, *extra: str) -> int:
    import hv_train_network

    argv = [
        "--config_file",
        str(ROOT / "configs" / "tiny_demo.toml"),
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        "--max_train_steps",
        "3",
        "--max_data_loader_n_workers",
        "0",
        *extra,
    ]
    return hv_train_network.main(argv)


def test_trainer_on_cpu_logs_a_note_and_writes_the_same_lora(
    cached_demo, tmp_path, monkeypatch, caplog, restore_logging
):
    monkeypatch.chdir(cached_demo)
    assert _train(tmp_path / "plain") == 0
    with caplog.at_level(logging.INFO):
        assert _train(tmp_path / "swap", "--blocks_to_swap", "2") == 0
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--blocks_to_swap")]
    assert notes == ["--blocks_to_swap 2 has no effect on the CPU: the DiT already lives in CPU memory"]
    a = load_file(str(tmp_path / "plain" / "tiny_lora.safetensors"))
    b = load_file(str(tmp_path / "swap" / "tiny_lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_refuses_too_many_blocks_in_one_line(
    cached_demo, tmp_path, monkeypatch, capsys, restore_logging
):
    monkeypatch.chdir(cached_demo)
    assert _train(tmp_path / "out", "--blocks_to_swap", "3") == 2  # the tiny DiT has 4 blocks
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --blocks_to_swap 3") and "0 to 2" in err
