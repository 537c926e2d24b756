"""Attention backends behind one function, their numerics: split_attn equals SDPA; the optional kernels, faked with
plain math in their libraries' real signatures, get the call conventions right (start-up checks:
test_attention_checks.py)."""

from __future__ import annotations

import pytest
import torch
from fake_attention_kernels import install_fake as _install_fake

import hunyuan_model.attention as attn_mod
from hunyuan_model.attention import (
    AttentionBackendError,
    attention,
    set_attention_backend,
)
from hunyuan_model.config import get_preset
from hunyuan_model.model import build_dit

IMG = 12  # image tokens at the front of every random sequence, always valid


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
