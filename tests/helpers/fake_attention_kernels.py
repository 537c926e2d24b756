"""The optional attention kernels (flash-attn, SageAttention, xformers), faked with plain math in their libraries'
real signatures, installed into sys.modules for a test: shared by tests/hunyuan_model/test_attention.py and
test_attention_checks.py.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F

import hunyuan_model.attention as attn_mod

# --- the optional kernels, faked -------------------------------------------------------------------------------


class Calls(list):
    """What the fake kernels were called with."""


def _math(q, k, v):
    """(B, L, H, D) attention in float32, returned in q's dtype: the kernels' contract, in plain math."""
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)
    )
    return out.transpose(1, 2).to(q.dtype)


def fake_flash(calls: Calls) -> types.ModuleType:
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


def fake_flash3(calls: Calls) -> types.ModuleType:
    """FlashAttention 3's flash_attn_interface: no dropout argument; returns (out, softmax_lse) as older
    builds do (the code takes either)."""

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **kwargs):
        assert q.dim() == 4 and q.dtype in (torch.float16, torch.bfloat16) and not causal
        assert "dropout_p" not in kwargs
        calls.append(("dense3", tuple(q.shape)))
        return _math(q, k, v), None

    def flash_attn_varlen_func(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, **kw
    ):
        assert q.dim() == 3 and not causal and "dropout_p" not in kw
        cu = cu_seqlens_q.tolist()
        calls.append(("varlen3", cu))
        parts = [_math(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in zip(cu, cu[1:], strict=False)]
        return torch.cat(parts), None

    module = types.ModuleType("flash_attn_interface")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    return module


def fake_sage(calls: Calls) -> types.ModuleType:
    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
        assert tensor_layout == "NHD" and not is_causal  # NHD = (B, L, H, D), our layout: no transposes
        assert q.dim() == 4 and q.dtype in (torch.float16, torch.bfloat16)
        calls.append(("sage", tuple(q.shape)))
        return _math(q, k, v)

    module = types.ModuleType("sageattention")
    module.sageattn = sageattn
    return module


def fake_xformers(calls: Calls) -> tuple[types.ModuleType, types.ModuleType]:
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


def install_fake(monkeypatch, backend: str) -> Calls:
    calls = Calls()
    if backend == "flash_attn":
        monkeypatch.setitem(sys.modules, "flash_attn", fake_flash(calls))
    elif backend == "flash3":
        monkeypatch.setitem(sys.modules, "flash_attn_interface", fake_flash3(calls))
    elif backend == "sage_attn":
        monkeypatch.setitem(sys.modules, "sageattention", fake_sage(calls))
    else:
        package, ops = fake_xformers(calls)
        monkeypatch.setitem(sys.modules, "xformers", package)
        monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attn_mod, "CUDA_ONLY", frozenset())  # the fakes run on the CPU
    return calls
