"""Attention for the DiT: one function, several kernels behind it (--sdpa, --flash_attn, --flash3, --sage_attn,
--xformers, --split_attn).

`--split_attn` alone is SDPA one sample at a time. Given with a kernel, it means what it means in
musubi-tuner: that kernel, called once per sample (batch 1) even when no token is padded; its backend name is
the kernel's with SPLIT appended ("xformers+split").

q, k, v are (B, L, H, D); the mask is a bool *key* mask (B, 1, 1, L): image tokens are always valid, padded
text tokens never are (model.py `_joint_mask`). The kernels other than SDPA take no mask, so they run on the
valid tokens only: packed with cu_seqlens (flash_attn) or one sample at a time (sage_attn, xformers,
split_attn). Rows of padded *query* tokens then differ between backends (zeros, or attention over the valid
keys as SDPA gives them). That is harmless: a padded token is never attended as a key (the mask hides it in
every block), and the final layer reads the image tokens only, so nothing it holds reaches the output or the
loss. Image-token outputs agree across backends up to kernel rounding.

Nothing here imports an optional package at module load, and nothing assumes CUDA.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from hv_common.errors import UserError

BACKENDS = ("sdpa", "flash_attn", "flash3", "sage_attn", "xformers", "split_attn")
SPLIT = "+split"  # "<kernel>+split": the kernel once per sample (--split_attn with a kernel)
# backend -> (module imported at the call, how to install it)
PACKAGES = {
    "flash_attn": ("flash_attn", "flash-attn"),
    # FlashAttention 3 (Hopper GPUs) has no wheel on PyPI: it is built from flash-attention's hopper/ folder
    "flash3": ("flash_attn_interface", "FlashAttention 3"),
    "sage_attn": ("sageattention", "sageattention"),
    "xformers": ("xformers.ops", "xformers"),
}
INSTALL_HINTS = {"flash3": "build it from https://github.com/Dao-AILab/flash-attention, folder hopper/"}
# Kernels with no CPU implementation. A module-level set so that tests can run fake kernels on the CPU.
CUDA_ONLY = frozenset(PACKAGES)
HALF_ONLY = frozenset({"flash_attn", "flash3", "sage_attn"})  # xformers also runs float32
_HALF = (torch.float16, torch.bfloat16)


class AttentionBackendError(UserError):
    """An attention backend that cannot run here (package missing, no CUDA, wrong dtype, training with
    SageAttention): one line, no traceback at the CLI."""


# --- start-up checks ----------------------------------------------------------------------------------------


def check_attention_backend(
    name: str,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype | None = None,
    training: bool = False,
    flag: str | None = None,
) -> None:
    """Fail now, in one line, when `name` cannot run: before any model is loaded.

    device / dtype: where and in what the DiT will compute, when known. training: SageAttention has no
    backward pass. flag: how the user chose the backend, for the message (default `--<name>`).
    """
    name = split_backend(name, flag)[0]
    flag = flag or f"--{name}"
    if name not in PACKAGES:
        return
    if name == "sage_attn" and training:
        raise AttentionBackendError(_sage_training_message(flag))
    _import_kernel(name, flag)
    if device is not None and torch.device(device).type != "cuda" and name in CUDA_ONLY:
        raise AttentionBackendError(
            f"{flag} runs on a CUDA GPU only and this run's device is {torch.device(device).type}; "
            "drop the flag (PyTorch SDPA is the default) or run on a GPU"
        )
    if dtype is not None and name in HALF_ONLY and dtype not in _HALF:
        raise AttentionBackendError(
            f"{flag} needs float16 or bfloat16 compute, not {str(dtype).removeprefix('torch.')}; "
            "use --dit_dtype bf16 or --mixed_precision bf16"
        )


@runtime_checkable
class _AttentionBlock(Protocol):
    """A DiT block that carries its attention backend (isinstance checks that it has the attribute)."""

    attn_backend: str


def split_backend(name: str, flag: str | None = None) -> tuple[str, bool]:
    """("xformers", True) for "xformers+split"; a name that is not a backend is an AttentionBackendError."""
    kernel, split = name.removesuffix(SPLIT), name.endswith(SPLIT)
    if kernel not in BACKENDS or (split and kernel in ("sdpa", "split_attn")):
        known = ", ".join([*BACKENDS, *(f"{k}{SPLIT}" for k in PACKAGES)])
        raise AttentionBackendError(f"{flag or name}: unknown attention backend {name!r}; known: {known}")
    return kernel, split


def set_attention_backend(model: nn.Module, name: str) -> int:
    """Make every DiT block of `model` attend with `name`; returns how many blocks were set.

    The blocks carry the choice (`attn_backend`) so that the model's forward needs no new argument. The token
    refiner stays on SDPA, as in the original HunyuanVideo: its mask is a full (L x L) one, and it is short.
    """
    split_backend(name)
    count = 0
    for module in model.modules():
        if isinstance(module, _AttentionBlock):
            module.attn_backend = name
            count += 1
    if count == 0:
        raise ValueError(
            f"{type(model).__name__} has no attention block to set (no `attn_backend` attribute)"
        )
    return count


def _import_kernel(name: str, flag: str | None = None):
    module_name, pip_name = PACKAGES[name]
    flag = flag or f"--{name}"
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            hint = INSTALL_HINTS.get(name, f"pip install {pip_name}")
            raise AttentionBackendError(f"{flag} needs the {pip_name} package ({hint})") from None
        # Installed but broken (built for another torch or CUDA): say so, not "install it".
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise AttentionBackendError(
            f"{flag}: the {pip_name} package is installed but fails to import: {first}"
        ) from None


def _sage_training_message(flag: str) -> str:
    return (
        f"{flag} cannot train: SageAttention has no backward pass, so gradients would silently stop at "
        "attention; train with --sdpa, --flash_attn or --xformers (SageAttention is for hv_generate_video.py)"
    )


# --- the function the blocks call ---------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    backend: str = "sdpa",
) -> torch.Tensor:
    """q, k, v: (B, L, H, D). attn_mask: bool, True = attend; for "sdpa" anything broadcastable to
    (B, H, Lq, Lk), for the other backends a key mask (B, 1, 1, Lk). Returns (B, L, H * D).
    """
    if backend == "sdpa":
        return _sdpa(q, k, v, attn_mask).flatten(2)
    kernel, split = split_backend(backend)
    valid = None if attn_mask is None else _key_valid(attn_mask, q, k, backend)
    if split:  # musubi-tuner's split: one call per sample, also when every token is valid
        if valid is None:
            valid = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
        return _KERNELS[kernel](q, k, v, valid, split=True).flatten(2)
    return _KERNELS[kernel](q, k, v, valid).flatten(2)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def _key_valid(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor, backend: str) -> torch.Tensor | None:
    """The (B, Lk) bool key mask, or None when every key is valid (then the kernels run on the whole batch)."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
        raise ValueError(
            f"attention backend {backend} takes a bool key mask of shape (B, 1, 1, L), "
            f"got {str(mask.dtype).removeprefix('torch.')} {tuple(mask.shape)}"
        )
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"attention backend {backend} needs as many queries as keys (self-attention)")
    valid = mask[:, 0, 0, :].expand(k.shape[0], k.shape[1])
    return None if bool(valid.all()) else valid


def _check_tensors(name: str, q: torch.Tensor) -> None:
    if name in CUDA_ONLY and q.device.type != "cuda":
        raise AttentionBackendError(f"--{name} runs on CUDA tensors only, got {q.device.type} tensors")
    if name in HALF_ONLY and q.dtype not in _HALF:
        raise AttentionBackendError(
            f"--{name} needs float16 or bfloat16 tensors, got {str(q.dtype).removeprefix('torch.')}; "
            "use --dit_dtype bf16 or --mixed_precision bf16"
        )


def _unpack(valid: torch.Tensor, packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, H, D) rows of the valid tokens back to (B, L, H, D), zeros at padded tokens (differentiable)."""
    return like.new_zeros(like.shape).index_put((valid,), packed)


def _per_sample(
    kernel: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    """A mask-less (B, L, H, D) kernel on each sample's valid tokens; zeros at padded query rows. With no
    mask (valid None) one call for the whole batch."""
    if valid is None:
        return kernel(q, k, v)
    outs = [
        kernel(q[b : b + 1, valid[b]], k[b : b + 1, valid[b]], v[b : b + 1, valid[b]])[0]
        for b in range(q.shape[0])
    ]
    return _unpack(valid, torch.cat(outs, dim=0), q)


def _split_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, split: bool = True
) -> torch.Tensor:
    """SDPA one sample at a time, each on its valid keys only and with no mask tensor. On CUDA a mask rules
    out PyTorch's flash kernel, so without one SDPA can take it, and one sample's working memory is live at a
    time (on the CPU, where SDPA's own kernel handles masks, it gains nothing). Every query row is computed,
    so padded rows equal plain SDPA's too."""
    outs = []
    for b in range(q.shape[0]):
        keys = slice(None) if valid is None else valid[b]
        outs.append(_sdpa(q[b : b + 1], k[b : b + 1, keys], v[b : b + 1, keys], None))
    return torch.cat(outs, dim=0)


def _flash_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, split: bool = False
) -> torch.Tensor:
    """FlashAttention 2: the valid tokens of all samples packed into one sequence list (cu_seqlens), as the
    original HunyuanVideo code does; padded query rows come back as zeros. split: flash_attn_func once per
    sample instead (musubi-tuner's --flash_attn --split_attn)."""
    _check_tensors("flash_attn", q)
    flash = _import_kernel("flash_attn")
    if split:
        return _per_sample(lambda q_, k_, v_: flash.flash_attn_func(q_, k_, v_, causal=False), q, k, v, valid)
    if valid is None:
        return flash.flash_attn_func(q, k, v, dropout_p=0.0, causal=False)
    return _varlen(flash.flash_attn_varlen_func, q, k, v, valid, dropout_p=0.0)


def _flash3(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, split: bool = False
) -> torch.Tensor:
    """FlashAttention 3 (flash_attn_interface, Hopper GPUs): as _flash_attn. Its functions return the output,
    or (output, softmax_lse) in older builds."""
    _check_tensors("flash3", q)
    fa3 = _import_kernel("flash3")

    def dense(q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor) -> torch.Tensor:
        return _first(fa3.flash_attn_func(q_, k_, v_, causal=False))

    if split or valid is None:
        return _per_sample(dense, q, k, v, valid) if split else dense(q, k, v)
    return _varlen(lambda *a, **kw: _first(fa3.flash_attn_varlen_func(*a, **kw)), q, k, v, valid)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _varlen(func: Callable[..., torch.Tensor], q, k, v, valid: torch.Tensor, **kwargs) -> torch.Tensor:
    """A varlen flash kernel on the valid tokens of all samples, packed (cu_seqlens); zeros at padded rows."""
    lengths = valid.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_len = int(lengths.max())
    packed = func(
        q[valid], k[valid], v[valid], cu_seqlens, cu_seqlens, max_len, max_len, causal=False, **kwargs
    )
    return _unpack(valid, packed, q)


def _sage_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, split: bool = False
) -> torch.Tensor:
    _check_tensors("sage_attn", q)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise AttentionBackendError(_sage_training_message("--sage_attn"))
    sage = _import_kernel("sage_attn")
    return _per_sample(
        lambda q_, k_, v_: sage.sageattn(q_, k_, v_, tensor_layout="NHD", is_causal=False), q, k, v, valid
    )


def _xformers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, split: bool = False
) -> torch.Tensor:
    """Per sample on the valid tokens rather than one call with a BlockDiagonalMask: the batch of a video
    run is 1-4 samples of thousands of tokens, so the loop costs nothing measurable, and it needs no
    packing, no attn_bias object and nothing from xformers beyond memory_efficient_attention."""
    _check_tensors("xformers", q)
    ops = _import_kernel("xformers")
    return _per_sample(
        lambda q_, k_, v_: ops.memory_efficient_attention(q_, k_, v_, attn_bias=None), q, k, v, valid
    )


_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "flash_attn": _flash_attn,
    "flash3": _flash3,
    "sage_attn": _sage_attn,
    "xformers": _xformers,
    "split_attn": _split_attn,
}
