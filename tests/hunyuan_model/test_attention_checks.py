"""The attention backends' start-up checks: a kernel that is missing, broken, on the wrong device or dtype, or
cannot train is one line, before the model loads, in the library, the training CLI and hv_generate_video.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fake_attention_kernels import install_fake as _install_fake

import hunyuan_model.attention as attn_mod
from generation.options import ComputeOptions
from hunyuan_model.attention import (
    AttentionBackendError,
    check_attention_backend,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")
GENERATE_REQUIRED = [
    "--dit",
    "x",
    "--text_encoder1",
    "t1",
    "--text_encoder2",
    "t2",
    "--prompt",
    "p",
    "--save_path",
    "out",
]
KERNEL_MODULES = {
    "flash_attn": ("flash_attn",),
    "sage_attn": ("sageattention",),
    "xformers": ("xformers", "xformers.ops"),
}


# --- start-up checks ------------------------------------------------------------------------------------------


def _hide(monkeypatch, backend: str) -> None:
    """The package is not installed (on any machine, also one that has it)."""
    for name in KERNEL_MODULES[backend]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("flash_attn", "--flash_attn needs the flash-attn package (pip install flash-attn)"),
        ("sage_attn", "--sage_attn needs the sageattention package (pip install sageattention)"),
        ("xformers", "--xformers needs the xformers package (pip install xformers)"),
    ],
)
def test_missing_package_is_one_line_naming_it(monkeypatch, backend, message):
    _hide(monkeypatch, backend)
    with pytest.raises(AttentionBackendError) as e:
        check_attention_backend(backend)
    assert str(e.value) == message


def test_broken_install_is_not_reported_as_missing(monkeypatch):
    def broken(name):
        raise ImportError("undefined symbol: _ZN3c104cuda9SetDevice", name="flash_attn_2_cuda")

    monkeypatch.setattr(attn_mod.importlib, "import_module", broken)
    with pytest.raises(
        AttentionBackendError, match="flash-attn package is installed but fails to import: undef"
    ):
        check_attention_backend("flash_attn")


@pytest.mark.parametrize("backend", ["flash_attn", "sage_attn", "xformers"])
def test_kernels_need_a_cuda_device(monkeypatch, backend):
    _install_fake(monkeypatch, backend)
    monkeypatch.setattr(attn_mod, "CUDA_ONLY", frozenset(attn_mod.PACKAGES))
    with pytest.raises(
        AttentionBackendError, match=f"--{backend} runs on a CUDA GPU only and this run's device"
    ):
        check_attention_backend(backend, torch.device("cpu"))
    check_attention_backend(backend, None)  # device unknown yet: the package check alone passes


def test_dtype_and_training_checks():
    check_attention_backend("sdpa", "cpu", dtype=torch.float32, training=True)
    check_attention_backend("split_attn", "cpu", dtype=torch.float32, training=True)
    with pytest.raises(AttentionBackendError, match="--sage_attn cannot train"):
        check_attention_backend("sage_attn", training=True)  # before the package check: installing won't help


def test_flash_dtype_check_at_start_up(monkeypatch):
    _install_fake(monkeypatch, "flash_attn")
    check_attention_backend("flash_attn", dtype=torch.bfloat16)
    with pytest.raises(AttentionBackendError, match="needs float16 or bfloat16 compute, not float32"):
        check_attention_backend("flash_attn", dtype=torch.float32)


# --- the training CLI ------------------------------------------------------------------------------------------


def _train(*extra: str) -> int:
    import hv_train_network

    return hv_train_network.main(
        [
            "--config_file",
            DEMO_TOML,
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            "out",
            "--sample_prompts",
            "",
            *extra,
        ]
    )


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load the DiT fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the DiT was loaded before the attention check")

    monkeypatch.setattr("hunyuan_model.checkpoint.load_dit", refuse)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("flash_attn", "error: --flash_attn needs the flash-attn package (pip install flash-attn)"),
        ("xformers", "error: --xformers needs the xformers package (pip install xformers)"),
        ("sage_attn", "error: --sage_attn cannot train: SageAttention has no backward pass"),
    ],
)
def test_training_cli_missing_kernel_exits_2_before_the_model_loads(
    cached_demo, monkeypatch, capsys, restore_logging, no_model_load, backend, expected
):
    monkeypatch.chdir(cached_demo)
    _hide(monkeypatch, backend)
    assert _train(f"--{backend}") == 2
    assert _one_error_line(capsys).startswith(expected)


def test_training_cli_kernel_on_cpu_exits_2(cached_demo, monkeypatch, capsys, restore_logging, no_model_load):
    monkeypatch.chdir(cached_demo)
    _install_fake(monkeypatch, "xformers")
    monkeypatch.setattr(attn_mod, "CUDA_ONLY", frozenset(attn_mod.PACKAGES))
    assert _train("--xformers") == 2
    assert "--xformers runs on a CUDA GPU only and this run's device is cpu" in _one_error_line(capsys)


def test_two_backend_flags_exit_2_with_one_line(capsys, restore_logging):
    import hv_train_network

    assert hv_train_network.main(["--flash_attn", "--xformers"]) == 2
    assert _one_error_line(capsys) == (
        "error: --flash_attn and --xformers exclude each other: choose one attention backend"
    )
    assert hv_train_network.main(["--sdpa", "--sage_attn"]) == 2
    assert "--sdpa and --sage_attn exclude each other" in _one_error_line(capsys)


def test_flags_choose_the_backend():
    from training.args import parse_args

    assert parse_args([]).memory.attention_backend == "sdpa"
    assert parse_args(["--sdpa"]).memory.attention_backend == "sdpa"
    assert (
        parse_args(["--sdpa", "--split_attn"]).memory.attention_backend == "split_attn"
    )  # musubi users: both
    assert parse_args(["--xformers"]).memory.attention_backend == "xformers"


def test_training_with_split_attn_sets_every_block_and_steps(cached_demo, monkeypatch):
    from training.args import parse_args
    from training.run import build_run
    from training.step import training_step

    monkeypatch.chdir(cached_demo)
    args = parse_args(
        [
            "--config_file",
            DEMO_TOML,
            "--dit",
            "models/tiny_dit.safetensors",
            "--split_attn",
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            "out",
        ]
    )
    run = build_run(args)
    backends = {m.attn_backend for m in run.model.modules() if hasattr(m, "attn_backend")}
    assert backends == {"split_attn"}
    loss = training_step(run, run.batches[0]).loss
    assert loss == loss and loss > 0  # finite, a real loss


# --- hv_generate_video.py ----------------------------------------------------------------------------------------


def _generate_args(*extra: str) -> ComputeOptions:
    from generation.options import build_parser
    from hv_common.options import options_from

    return options_from(ComputeOptions, build_parser().parse_args([*GENERATE_REQUIRED, *extra]))


def test_generate_attn_modes_map_to_backends(monkeypatch):
    from generation.generate import _attention_backend

    assert _attention_backend(_generate_args()) == "sdpa"
    assert _attention_backend(_generate_args("--attn_mode", "torch")) == "sdpa"
    assert _attention_backend(_generate_args("--split_attn")) == "split_attn"
    _install_fake(monkeypatch, "sage_attn")
    assert _attention_backend(_generate_args("--attn_mode", "sageattn")) == "sage_attn"  # inference: allowed
    # musubi-tuner's --split_attn with a kernel: that kernel once per sample
    assert _attention_backend(_generate_args("--attn_mode", "sageattn", "--split_attn")) == "sage_attn+split"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--attn_mode", "xformers"],
            "error: --attn_mode xformers needs the xformers package (pip install xformers)",
        ),
        (
            ["--attn_mode", "xformers", "--split_attn"],
            "error: --attn_mode xformers needs the xformers package (pip install xformers)",
        ),
        (["--attn_mode", "flash3"], "error: --attn_mode flash3: unknown; use one of sdpa, torch, flash"),
    ],
)
def test_generate_cli_attention_errors_are_one_line(
    tmp_path, monkeypatch, capsys, restore_logging, extra, expected
):
    import hv_generate_video

    monkeypatch.chdir(tmp_path)
    _hide(monkeypatch, "xformers")
    assert hv_generate_video.main([*GENERATE_REQUIRED, *extra]) == 2
    assert _one_error_line(capsys).startswith(expected)
    assert not (tmp_path / "out").exists()
