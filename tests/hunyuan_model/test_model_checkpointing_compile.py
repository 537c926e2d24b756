"""--gradient_checkpointing_cpu_offload and --compile on the tiny DiT: same loss and LoRA gradients, same
state-dict keys, compiled code really runs, block swap adds no recompiles; the options' one-line errors."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from lora_testing import applied_random_network, tiny_inputs, tiny_model

from hv_common.errors import UserError
from training.args import parse_args

# tensors a checkpoint keeps per block: (img, txt, vec), (x, vec); a batch of one runs without an attention mask
DOUBLE_INPUTS, SINGLE_INPUTS = 3, 2


def _model(ckpt: bool = False, offload: bool = False):
    model = tiny_model()
    net = applied_random_network(model)
    if ckpt:
        model.enable_gradient_checkpointing(cpu_offload=offload)
    return model, net


def _step(model, net):
    loss = model(**tiny_inputs()).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _assert_same(a, b) -> None:
    assert torch.equal(a[0], b[0]) and a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name]), name


class _CountingHooks(torch.autograd.graph.saved_tensors_hooks):
    """Stands in for save_on_cpu: counts what it is given to keep (on the CPU, save_on_cpu keeps it as is)."""

    packed = 0

    def __init__(self, pin_memory: bool = False) -> None:
        def pack(t):
            _CountingHooks.packed += 1
            return t.cpu()

        super().__init__(pack, lambda t: t)


def test_checkpoint_cpu_offload_keeps_the_block_inputs_through_save_on_cpu(monkeypatch):
    ref = _step(*_model(ckpt=True))
    assert all(g.abs().max() > 0 for g in ref[1].values())
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", _CountingHooks)
    _CountingHooks.packed = 0
    model, net = _model(ckpt=True, offload=True)
    _assert_same(_step(model, net), ref)
    assert _CountingHooks.packed == 2 * DOUBLE_INPUTS + 2 * SINGLE_INPUTS  # the inputs only: nothing inside
    _CountingHooks.packed = 0
    with torch.no_grad():  # inference: nothing is kept
        model(**tiny_inputs())
    assert _CountingHooks.packed == 0


def test_checkpoint_cpu_offload_with_the_real_save_on_cpu_and_block_swap():
    ref = _step(*_model(ckpt=True))
    model, net = _model(ckpt=True, offload=True)
    swapper = model.enable_block_swap(2, "cpu")
    _assert_same(_step(model, net), ref)
    assert swapper.stats.loads == 3


def test_cpu_offload_needs_checkpointing():
    model, _ = _model()
    with pytest.raises(ValueError, match="needs gradient checkpointing"):
        model.enable_gradient_checkpointing(False, cpu_offload=True)
    with pytest.raises(
        UserError, match="^--gradient_checkpointing_cpu_offload needs --gradient_checkpointing$"
    ):
        parse_args(["--gradient_checkpointing_cpu_offload"])
    assert parse_args(["--gradient_checkpointing", "--gradient_checkpointing_cpu_offload"])


# ---------------------------------------------------------------- compile

_compiled = {"graphs": 0, "calls": 0}


def _counting_backend(gm, example_inputs):
    """An eager backend that counts the graphs it is given and how often compiled code runs."""
    _compiled["graphs"] += 1

    def run(*args):
        _compiled["calls"] += 1
        return gm.forward(*args)

    return run


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    _compiled.update(graphs=0, calls=0)
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
def test_compiled_blocks_run_and_change_nothing(ckpt, fresh_dynamo):
    ref_model, ref_net = _model(ckpt)
    ref = _step(ref_model, ref_net)
    model, net = _model(ckpt)
    model.compile_blocks(backend=_counting_backend)
    _assert_same(_step(model, net), ref)
    assert model.state_dict().keys() == ref_model.state_dict().keys()  # no `_orig_mod.` in any key
    assert all(type(b).__name__.startswith("MM") for b in model.blocks())  # still the block classes
    # 4 blocks (checkpointing: + 4 recomputes); double block 0 gets a graph of its own: its inputs need no grad
    assert _compiled["calls"] == (8 if ckpt else 4) and _compiled["graphs"] == 3


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointing"])
def test_compile_with_block_swap_is_the_same_and_never_recompiles(ckpt, fresh_dynamo):
    model, net = _model(ckpt)
    model.compile_blocks(backend=_counting_backend)
    ref = _step(model, net)
    graphs = _compiled["graphs"]
    model, net = _model(ckpt)
    model.compile_blocks(backend=_counting_backend)
    swapper = model.enable_block_swap(2, "cpu")
    for _ in range(2):
        net.zero_grad(set_to_none=True)
        _assert_same(_step(model, net), ref)
    assert _compiled["graphs"] == graphs == 3 and swapper.stats.loads == 6


@pytest.mark.slow
def test_aot_eager_gives_the_same_gradients_with_block_swap(fresh_dynamo):
    ref = _step(*_model())
    model, net = _model()
    model.compile_blocks(backend="aot_eager")
    model.enable_block_swap(2, "cpu")
    _assert_same(_step(model, net), ref)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="inductor needs a C compiler"
)
@pytest.mark.skipif(
    os.environ.get("HV_TEST_INDUCTOR") != "1",
    reason="~3 minutes with a cold compile cache (every CI run): HV_TEST_INDUCTOR=1 runs it",
)
def test_inductor_with_block_swap_equals_inductor_without(fresh_dynamo):
    """Minutes with a cold compile cache. Inductor's fused kernels round differently from eager, so the swap
    is compared with inductor itself: bit-identical; the loss also stays within rounding of eager's."""
    eager = _step(*_model(ckpt=True))
    model, net = _model(ckpt=True)
    model.compile_blocks()
    compiled = _step(model, net)
    model, net = _model(ckpt=True)
    model.compile_blocks()
    model.enable_block_swap(2, "cpu")
    _assert_same(_step(model, net), compiled)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=0)


def test_compile_options_parse_and_reach_the_model(monkeypatch):
    from training.run import swap_and_compile

    args = parse_args(
        [
            "--compile",
            "--compile_backend",
            "eager",
            "--compile_mode",
            "max-autotune-no-cudagraphs",
            "--compile_dynamic",
            "FALSE",
            "--compile_fullgraph",
        ]
    )
    seen = []
    model, _ = _model()
    monkeypatch.setattr(model, "compile_blocks", lambda *a: seen.append(a))
    swap_and_compile(args.memory, model, torch.device("cpu"))
    assert seen == [("eager", "max-autotune-no-cudagraphs", False, True)]
    assert parse_args([]).memory.compile_mode == "default" and parse_args([]).memory.compile_dynamic is None


def test_unknown_backend_is_one_line():
    from training.run import swap_and_compile

    model, _ = _model()
    with pytest.raises(UserError, match="^--compile_backend nope: unknown; known: .*inductor"):
        swap_and_compile(
            parse_args(["--compile", "--compile_backend", "nope"]).memory, model, torch.device("cpu")
        )


@pytest.mark.parametrize(
    "extra",
    [
        ["--compile_mode", "reduce-overhead"],
        ["--compile_mode", "max-autotune"],
        ["--compile_backend", "cudagraphs"],
    ],
)
def test_cuda_graphs_and_block_swap_are_refused(extra):
    with pytest.raises(UserError, match="--blocks_to_swap") as info:
        parse_args(["--compile", "--blocks_to_swap", "10", *extra])
    assert "\n" not in str(info.value)
    assert parse_args(["--compile", *extra])  # without swap: fine
