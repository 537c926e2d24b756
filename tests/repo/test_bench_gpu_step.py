"""bench/gpu_step.py needs a GPU machine to measure anything: keep it from rotting by running it small on the CPU."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_step"] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_step_runs_every_variant_small_on_cpu(capsys):
    bench = _load_bench()
    argv = [
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--width",
        "64",
        "--height",
        "64",
        "--frames",
        "5",
        "--text_tokens",
        "16",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--variants",
        "base,swap2,fp8_swap2",
    ]
    assert bench.main(argv) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert [r["variant"] for r in results] == ["base", "swap2", "fp8_swap2"]
    assert [(r["fp8_scaled"], r["blocks_to_swap"]) for r in results] == [(False, 0), (False, 2), (True, 2)]
    flops = {r["forward_tflop"] for r in results}
    assert len(flops) == 1 and flops.pop() > 0  # one model-FLOP count, counted on meta, for every variant
    assert all(r["s_per_step_min"] > 0 and r["estimate_gib"] > 0 for r in results)


def test_variant_names_are_checked():
    bench = _load_bench()
    assert bench.parse_variant("fp8_swap20") == (True, 20)
    assert bench.parse_variant("base") == (False, 0)
    try:
        bench.parse_variant("swapx")
    except SystemExit as e:
        assert "unknown variant" in str(e)
    else:
        raise AssertionError("a bad variant name must stop the benchmark")
