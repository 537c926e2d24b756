"""hv_generate_video.py's --compile, --compile_backend, --compile_mode, --compile_dynamic, --compile_fullgraph,
--compile_cache_size_limit, --compile_args and --fp8_fast: what torch.compile receives, fp8 matmuls, one-line
refusals."""

from __future__ import annotations

import pytest
import torch
from lora_testing import applied_random_network, tiny_inputs, tiny_model

from generation.generate import _swap_offload_compile
from generation.options import ComputeOptions, build_parser
from hunyuan_model.fp8 import Fp8Linear, quantize_linears
from hunyuan_model.fp8_fast import Fp8FastLinear, enable_fp8_fast
from hv_common.errors import UserError
from hv_common.options import options_from

REQUIRED = [
    "--dit",
    "d",
    "--text_encoder1",
    "t1",
    "--text_encoder2",
    "t2",
    "--prompt",
    "p",
    "--save_path",
    "o",
]


def _compute(*extra: str) -> ComputeOptions:
    return options_from(ComputeOptions, build_parser().parse_args([*REQUIRED, *extra]))


@pytest.fixture
def captured(monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    limit = torch._dynamo.config.recompile_limit
    yield calls
    torch._dynamo.config.recompile_limit = limit


def test_compile_gives_each_block_the_options(captured):
    compute = _compute(
        "--compile",
        "--compile_backend",
        "aot_eager",
        "--compile_mode",
        "max-autotune-no-cudagraphs",
        "--compile_dynamic",
        "false",
        "--compile_fullgraph",
        "--compile_cache_size_limit",
        "11",
    )
    model = tiny_model()
    _swap_offload_compile(compute, model, torch.device("cpu"))
    assert len(captured) == len(model.blocks()) == 4
    assert captured[0] == dict(
        backend="aot_eager", mode="max-autotune-no-cudagraphs", dynamic=False, fullgraph=True
    )
    assert torch._dynamo.config.recompile_limit == 11


def test_compile_args_win_as_in_musubi_tuner(captured):
    compute = _compute(
        "--compile", "--compile_backend", "eager", "--compile_args", "inductor", "default", "True", "false"
    )
    _swap_offload_compile(compute, tiny_model(), torch.device("cpu"))
    assert captured[0] == dict(
        backend="inductor", mode=None, dynamic=True, fullgraph=False
    )  # "default": None
    assert torch._dynamo.config.recompile_limit == 32  # musubi-tuner's old default, set with --compile_args
    with pytest.raises(UserError, match="--compile_args inductor fast true false: MODE is one of"):
        _compute("--compile", "--compile_args", "inductor", "fast", "true", "false")


def test_no_compile_no_call(captured):
    _swap_offload_compile(_compute(), tiny_model(), torch.device("cpu"))
    assert captured == []


def test_cuda_graph_mode_with_block_swap_is_refused():
    with pytest.raises(UserError, match="--compile_mode reduce-overhead uses CUDA graphs"):
        _compute("--compile", "--compile_mode", "reduce-overhead", "--blocks_to_swap", "1")


def test_fp8_fast_multiplies_in_fp8_and_stays_close(monkeypatch):
    model = tiny_model()
    calls = []
    scaled_mm = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **kw: calls.append(1) or scaled_mm(*a, **kw))
    with torch.no_grad():
        ref = model(**tiny_inputs())
        quantize_linears(model, scaled=True)
        slow = model(**tiny_inputs())
        assert calls == []
        count = enable_fp8_fast(model)
        fast = model(**tiny_inputs())
        n_fast = sum(type(m) is Fp8FastLinear for m in model.modules())
        assert count == n_fast > 0 and all(type(m) is not Fp8Linear for m in model.modules())
        assert len(calls) == n_fast  # each fp8 Linear, once
        assert not torch.equal(fast, slow)  # a different computation: the activations are in fp8 too
        error = (fast - ref).norm() / ref.norm()
        assert error < 0.05, error
        calls.clear()
        applied_random_network(model)  # as generate.py does: the LoRAs after --fp8_fast keep it
        model(**tiny_inputs())
    assert len(calls) == n_fast


def test_fp8_fast_needs_fp8():
    with pytest.raises(UserError, match="--fp8_fast requires --fp8"):
        _compute("--fp8_fast")


def test_fp8_fast_on_a_cpu_is_one_line_exit_2(tmp_path, monkeypatch, capsys, restore_logging):
    import hv_generate_video

    monkeypatch.chdir(tmp_path)
    for name in ("d", "t1", "t2"):
        (tmp_path / name).write_bytes(b"")
    argv = [*REQUIRED, "--fp8", "--fp8_fast", "--device", "cpu", "--output_type", "latent"]
    assert hv_generate_video.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: --fp8_fast needs a CUDA GPU with fp8 matmuls (compute capability 8.9 or newer: RTX 40xx, L4, "
        "H100); this run's device is cpu"
    ], err
    assert not (tmp_path / "o").exists()
