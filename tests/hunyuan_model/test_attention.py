"""Attention backends behind one function: split_attn equals SDPA; the optional kernels, faked with plain math
in their libraries' real signatures, get the call conventions right; a kernel that cannot run is one line."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hunyuan_model.attention as attn_mod
from generation.options import ComputeOptions
from hunyuan_model.attention import (
    AttentionBackendError,
    attention,
    check_attention_backend,
    set_attention_backend,
)
from hunyuan_model.config import get_preset
from hunyuan_model.model import build_dit

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
IMG = 12  # image tokens at the front of every random sequence, always valid
KERNEL_MODULES = {
    "flash_attn": ("flash_attn",),
    "sage_attn": ("sageattention",),
    "xformers": ("xformers", "xformers.ops"),
}


def _qkv(batch: int = 3, length: int = 20, heads: int = 2, dim: int = 8, dtype=torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, length, heads, dim, generator=gen, dtype=torch.float32).to(dtype) for _ in "qkv"
    ]


def _key_mask(lengths: list[int], length: int = 20) -> torch.Tensor:
    """The DiT's joint mask: IMG image tokens, then valid text tokens, then padding; (B, 1, 1, L)."""
    valid = torch.arange(length)[None, :] < torch.tensor([IMG + n for n in lengths])[:, None]
    return valid[:, None, None, :]


def _sdpa_reference(q, k, v, mask):
    return attention(q.float(), k.float(), v.float(), mask, backend="sdpa")


# --- split_attn -----------------------------------------------------------------------------------------------


def test_split_attn_equals_sdpa_on_masked_inputs_values_and_gradients():
    q, k, v = (t.double().requires_grad_() for t in _qkv())
    mask = _key_mask([3, 8, 0])  # sample 1: no padding, sample 2: no valid text at all
    ref = attention(q, k, v, mask)
    out = attention(q, k, v, mask, backend="split_attn")
    assert out.shape == ref.shape == (3, 20, 16)
    # every query row is computed on the valid keys, so padded rows agree too, not only image tokens
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    weights = torch.randn(out.shape, dtype=out.dtype)
    grads_ref = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    grads_out = torch.autograd.grad((out * weights).sum(), (q, k, v))
    for a, b in zip(grads_out, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # and the mask matters: without it the result differs (the comparison above could fail)
    assert not torch.allclose(attention(q, k, v, None, backend="split_attn"), ref)


def test_split_attn_without_mask_equals_sdpa():
    q, k, v = _qkv()
    torch.testing.assert_close(
        attention(q, k, v, backend="split_attn"), attention(q, k, v), rtol=0, atol=1e-6
    )


def _dit_inputs(batch: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2, 8, 8, generator=gen)
    text = torch.randn(batch, 6, 32, generator=gen)
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]][:batch])
    clip = torch.randn(batch, 32, generator=gen)
    t = torch.tensor([300.0, 700.0][:batch])
    return x, t, text, text_mask, clip, torch.full((batch,), 6000.0)


def _tiny_dit(dtype=torch.float32):
    torch.manual_seed(0)
    return build_dit(get_preset("tiny"), device="cpu", dtype=dtype).eval()


def test_split_attn_equals_sdpa_on_the_tiny_dit_forward():
    model = _tiny_dit()
    inputs = _dit_inputs()
    with torch.no_grad():
        ref = model(*inputs)
        assert set_attention_backend(model, "split_attn") == 4  # 2 double + 2 single blocks; not the refiner
        out = model(*inputs)
        # padded text tokens never reach the output: change them, nothing moves
        x, t, text, text_mask, clip, guidance = inputs
        noisy = text.clone()
        noisy[0, 4:] = 100.0
        out_noisy = model(x, t, noisy, text_mask, clip, guidance)
    assert all(b.attn_backend == "split_attn" for b in [*model.double_blocks, *model.single_blocks])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_noisy, out, rtol=0, atol=1e-5)


def test_unknown_backend_and_unsupported_mask_are_errors():
    q, k, v = _qkv()
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'flash'"):
        attention(q, k, v, None, backend="flash")
    with pytest.raises(AttentionBackendError, match="unknown attention backend"):
        set_attention_backend(_tiny_dit(), "flash")
    full = torch.ones(3, 1, 20, 20, dtype=torch.bool)  # the refiner's (L x L) mask is SDPA's business
    with pytest.raises(ValueError, match=r"key mask of shape \(B, 1, 1, L\)"):
        attention(q, k, v, full, backend="split_attn")


# --- the optional kernels, faked -------------------------------------------------------------------------------


class Calls(list):
    """What the fake kernels were called with."""


def _math(q, k, v):
    """(B, L, H, D) attention in float32, returned in q's dtype: the kernels' contract, in plain math."""
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)
    )
    return out.transpose(1, 2).to(q.dtype)


def _fake_flash(calls: Calls) -> types.ModuleType:
    def flash_attn_func(
        q,
        k,
        v,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        window_size=(-1, -1),
        softcap=0.0,
        alibi_slopes=None,
        deterministic=False,
        return_attn_probs=False,
    ):
        assert q.dim() == 4 and q.dtype in (torch.float16, torch.bfloat16) and not causal and dropout_p == 0.0
        calls.append(("dense", tuple(q.shape)))
        return _math(q, k, v)

    def flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
        window_size=(-1, -1),
        softcap=0.0,
        alibi_slopes=None,
        deterministic=False,
        return_attn_probs=False,
        block_table=None,
    ):
        assert q.dim() == k.dim() == v.dim() == 3  # (total, H, D): packed, no batch axis
        assert q.dtype in (torch.float16, torch.bfloat16) and not causal and dropout_p == 0.0
        assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
        assert isinstance(max_seqlen_q, int) and isinstance(max_seqlen_k, int)
        cu = cu_seqlens_q.tolist()
        assert cu[0] == 0 and cu[-1] == q.shape[0] and cu == cu_seqlens_k.tolist()
        assert max_seqlen_q == max(b - a for a, b in zip(cu, cu[1:], strict=False))
        calls.append(("varlen", cu))
        parts = [_math(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in zip(cu, cu[1:], strict=False)]
        return torch.cat(parts)

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def _fake_sage(calls: Calls) -> types.ModuleType:
    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
        assert tensor_layout == "NHD" and not is_causal  # NHD = (B, L, H, D), our layout: no transposes
        assert q.dim() == 4 and q.dtype in (torch.float16, torch.bfloat16)
        calls.append(("sage", tuple(q.shape)))
        return _math(q, k, v)

    module = types.ModuleType("sageattention")
    module.sageattn = sageattn
    return module


def _fake_xformers(calls: Calls) -> tuple[types.ModuleType, types.ModuleType]:
    def memory_efficient_attention(
        query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None, output_dtype=None
    ):
        assert attn_bias is None and p == 0.0 and query.dim() == 4  # [B, M, H, K]
        calls.append(("xformers", tuple(query.shape)))
        return _math(query, key, value)

    package, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    package.ops = ops
    return package, ops


def _install_fake(monkeypatch, backend: str) -> Calls:
    calls = Calls()
    if backend == "flash_attn":
        monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash(calls))
    elif backend == "sage_attn":
        monkeypatch.setitem(sys.modules, "sageattention", _fake_sage(calls))
    else:
        package, ops = _fake_xformers(calls)
        monkeypatch.setitem(sys.modules, "xformers", package)
        monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attn_mod, "CUDA_ONLY", frozenset())  # the fakes run on the CPU
    return calls


def _kernel_dtype(backend: str) -> torch.dtype:
    return torch.float32 if backend == "xformers" else torch.bfloat16


@pytest.mark.parametrize("backend", ["flash_attn", "sage_attn", "xformers"])
def test_fake_kernel_gives_sdpa_image_tokens(monkeypatch, backend):
    calls = _install_fake(monkeypatch, backend)
    dtype = _kernel_dtype(backend)
    q, k, v = _qkv(dtype=dtype)
    mask = _key_mask([3, 8, 0])
    out = attention(q, k, v, mask, backend=backend)
    assert out.dtype == dtype and out.shape == (3, 20, 16)
    ref = _sdpa_reference(q, k, v, mask)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for b, n_text in enumerate([3, 8, 0]):
        valid = IMG + n_text
        torch.testing.assert_close(out[b, :IMG].float(), ref[b, :IMG], rtol=tol, atol=tol)  # image tokens
        torch.testing.assert_close(
            out[b, :valid].float(), ref[b, :valid], rtol=tol, atol=tol
        )  # valid text too
        assert out[b, valid:].eq(0).all()  # padded query rows: zeros, never read
    if backend == "flash_attn":
        assert calls == [("varlen", [0, 15, 35, 47])]  # one packed call: 12+3, 12+8, 12+0 valid tokens
    else:
        assert calls == [
            (backend.split("_")[0], (1, n, 2, 8)) for n in (15, 20, 12)
        ]  # per sample, valid only


@pytest.mark.parametrize("backend", ["flash_attn", "sage_attn", "xformers"])
def test_fake_kernel_without_padding_is_one_batched_call(monkeypatch, backend):
    calls = _install_fake(monkeypatch, backend)
    q, k, v = _qkv(dtype=_kernel_dtype(backend))
    out = attention(q, k, v, _key_mask([8, 8, 8]), backend=backend)  # a mask with nothing masked
    assert len(calls) == 1 and calls[0][0] in ("dense", "sage", "xformers")
    tol = 1e-5 if backend == "xformers" else 2e-2
    torch.testing.assert_close(out.float(), _sdpa_reference(q, k, v, None), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", ["flash_attn", "sage_attn", "xformers"])
def test_fake_kernel_in_the_tiny_dit_forward(monkeypatch, backend):
    calls = _install_fake(monkeypatch, backend)
    dtype = _kernel_dtype(backend)
    model = _tiny_dit(dtype)
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in _dit_inputs()]
    with torch.no_grad():
        ref = model(*inputs).float()
        set_attention_backend(model, backend)
        out = model(*inputs).float()
    assert len(calls) == 4 * (1 if backend == "flash_attn" else 2)  # 4 blocks; per-sample kernels: 2 samples
    tol = 1e-4 if dtype == torch.float32 else 0.1  # bf16 through 4 blocks
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_flash_refuses_float32_and_cpu_tensors_in_one_line(monkeypatch):
    _install_fake(monkeypatch, "flash_attn")
    q, k, v = _qkv()
    with pytest.raises(
        AttentionBackendError, match="--flash_attn needs float16 or bfloat16 tensors, got float32"
    ):
        attention(q, k, v, None, backend="flash_attn")
    monkeypatch.setattr(attn_mod, "CUDA_ONLY", frozenset({"flash_attn"}))
    with pytest.raises(AttentionBackendError, match="--flash_attn runs on CUDA tensors only, got cpu"):
        attention(*(t.bfloat16() for t in (q, k, v)), None, backend="flash_attn")


def test_sage_refuses_to_run_where_gradients_are_needed(monkeypatch):
    calls = _install_fake(monkeypatch, "sage_attn")
    q, k, v = _qkv(dtype=torch.bfloat16)
    with pytest.raises(
        AttentionBackendError, match="--sage_attn cannot train: SageAttention has no backward"
    ):
        attention(q.requires_grad_(), k, v, None, backend="sage_attn")
    assert calls == []


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


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--attn_mode", "xformers"],
            "error: --attn_mode xformers needs the xformers package (pip install xformers)",
        ),
        (
            ["--attn_mode", "flash", "--split_attn"],
            "error: --split_attn and --attn_mode flash exclude each other",
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
