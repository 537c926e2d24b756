"""musubi-tuner's --dynamo_backend / --dynamo_mode / --dynamo_fullgraph / --dynamo_dynamic: the whole DiT goes
through torch.compile with the arguments accelerate's TorchDynamoPlugin gives it."""

from __future__ import annotations

import pytest
import torch
from lora_testing import applied_random_network, tiny_inputs, tiny_model

from hv_common.errors import UserError
from training.args import parse_args
from training.run import swap_and_compile

FLAGS = [
    "--dynamo_backend",
    "INDUCTOR",
    "--dynamo_mode",
    "max-autotune",
    "--dynamo_fullgraph",
    "--dynamo_dynamic",
]


def _plugin_kwargs(**given) -> dict:
    from accelerate.utils import DynamoBackend, TorchDynamoPlugin

    backend = given.pop("backend")
    return TorchDynamoPlugin(backend=DynamoBackend(backend), **given).to_kwargs()


@pytest.mark.parametrize(
    ("argv", "plugin"),
    [
        (FLAGS, dict(backend="INDUCTOR", mode="max-autotune", fullgraph=True, dynamic=True)),
        (["--dynamo_backend", "EAGER"], dict(backend="EAGER", mode=None, fullgraph=False, dynamic=False)),
    ],
)
def test_the_arguments_are_those_of_accelerates_plugin(argv, plugin):
    """musubi-tuner builds TorchDynamoPlugin(backend, mode, fullgraph, dynamic): torch.compile gets the same."""
    ours = parse_args(argv).memory.dynamo_compile_kwargs
    theirs = _plugin_kwargs(**plugin)
    defaults = {"mode": None, "fullgraph": False}  # the plugin leaves torch.compile's defaults out
    assert ours == {**defaults, **theirs}


def test_off_by_default():
    memory = parse_args([]).memory
    assert memory.dynamo_backend == "NO" and memory.dynamo_compile_kwargs is None


def test_the_whole_dit_is_compiled_with_them(monkeypatch):
    captured = []

    def fake_compile(fn, **kwargs):
        captured.append((fn, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = tiny_model()
    swap_and_compile(parse_args(FLAGS).memory, model, torch.device("cpu"))
    assert len(captured) == 1
    fn, kwargs = captured[0]
    assert fn == model._call_impl  # the model's own forward, in place: names and state-dict keys unchanged
    assert kwargs == {"backend": "inductor", "mode": "max-autotune", "fullgraph": True, "dynamic": True}
    captured.clear()
    swap_and_compile(parse_args([]).memory, tiny_model(), torch.device("cpu"))
    assert captured == []


def test_eager_backend_runs_and_changes_nothing():
    torch._dynamo.reset()
    model = tiny_model()
    applied_random_network(model)
    with torch.no_grad():
        ref = model(**tiny_inputs())
        swap_and_compile(parse_args(["--dynamo_backend", "EAGER"]).memory, model, torch.device("cpu"))
        out = model(**tiny_inputs())
    assert model._compiled_call_impl is not None
    torch.testing.assert_close(out, ref)
    torch._dynamo.reset()


def test_a_backend_not_installed_is_one_line():
    with pytest.raises(UserError, match="--dynamo_backend onnxrt: not available here; known: "):
        swap_and_compile(parse_args(["--dynamo_backend", "ONNXRT"]).memory, tiny_model(), torch.device("cpu"))


def test_cuda_graph_modes_with_block_swap_are_refused():
    with pytest.raises(UserError, match="uses CUDA graphs, which block swap breaks"):
        parse_args(
            ["--dynamo_backend", "INDUCTOR", "--dynamo_mode", "reduce-overhead", "--blocks_to_swap", "2"]
        )
