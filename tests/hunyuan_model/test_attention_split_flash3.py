"""--flash3 (FlashAttention 3) and --split_attn given with a kernel (musubi-tuner's meaning: that kernel once per
sample), in the library and the training CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fake_attention_kernels import install_fake

from hunyuan_model.attention import AttentionBackendError, attention, check_attention_backend

ROOT = Path(__file__).resolve().parents[2]
IMG = 12  # image tokens of _qkv's 20


def _qkv(batch: int = 3, length: int = 20, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, length, 2, 8, generator=g).to(dtype) for _ in range(3)]


def _key_mask(n_text: list[int], length: int = 20) -> torch.Tensor:
    valid = torch.arange(length)[None, :] < torch.tensor([IMG + n for n in n_text])[:, None]
    return valid[:, None, None, :]


def _reference(q, k, v, mask):
    out = torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (q, k, v)), attn_mask=mask
    )
    return out.transpose(1, 2).flatten(2)


def test_flash3_missing_is_one_line_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    with pytest.raises(AttentionBackendError) as e:
        check_attention_backend("flash3", "cuda", training=True)
    assert str(e.value) == (
        "--flash3 needs the FlashAttention 3 package (build it from "
        "https://github.com/Dao-AILab/flash-attention, folder hopper/)"
    )


def test_flash3_packs_the_valid_tokens_and_matches_sdpa(monkeypatch):
    calls = install_fake(monkeypatch, "flash3")
    q, k, v = _qkv()
    mask = _key_mask([3, 8, 0])
    out = attention(q, k, v, mask, backend="flash3")
    assert calls == [("varlen3", [0, 15, 35, 47])]
    ref = _reference(q, k, v, mask)
    for b, n_text in enumerate([3, 8, 0]):
        torch.testing.assert_close(
            out[b, : IMG + n_text].float(), ref[b, : IMG + n_text], rtol=2e-2, atol=2e-2
        )
    with pytest.raises(AttentionBackendError, match="--flash3 needs float16 or bfloat16 tensors"):
        attention(*(t.float() for t in (q, k, v)), None, backend="flash3")


@pytest.mark.parametrize(
    ("backend", "kind"),
    [("xformers", "xformers"), ("flash_attn", "dense"), ("flash3", "dense3"), ("sage_attn", "sage")],
)
def test_split_with_a_kernel_calls_it_once_per_sample(monkeypatch, backend, kind):
    calls = install_fake(monkeypatch, backend)
    q, k, v = _qkv()
    no_padding = _key_mask([8, 8, 8])
    with torch.no_grad():
        plain = attention(q, k, v, no_padding, backend=backend)
        assert len(calls) == 1  # without split: one batched call
        calls.clear()
        split = attention(q, k, v, no_padding, backend=f"{backend}+split")
    assert calls == [(kind, (1, 20, 2, 8))] * 3  # with split: batch 1, once per sample
    torch.testing.assert_close(split, plain, rtol=2e-2, atol=2e-2)
    calls.clear()
    mask = _key_mask([3, 8, 0])
    with torch.no_grad():
        out = attention(q, k, v, mask, backend=f"{backend}+split")
    assert calls == [(kind, (1, n, 2, 8)) for n in (15, 20, 12)]  # each on its valid tokens
    torch.testing.assert_close(out[0, :15].float(), _reference(q, k, v, mask)[0, :15], rtol=2e-2, atol=2e-2)


def test_split_suffix_needs_a_kernel():
    q, k, v = _qkv()
    with pytest.raises(AttentionBackendError, match="unknown attention backend 'sdpa\\+split'"):
        attention(q, k, v, None, backend="sdpa+split")


def test_flags_choose_kernel_with_split():
    from training.args import parse_args

    assert parse_args(["--xformers", "--split_attn"]).memory.attention_backend == "xformers+split"
    assert parse_args(["--flash3"]).memory.attention_backend == "flash3"
    assert parse_args(["--flash3", "--split_attn"]).memory.attention_backend == "flash3+split"
    assert parse_args(["--sdpa", "--split_attn"]).memory.attention_backend == "split_attn"


def _train(*extra: str) -> int:
    import hv_train_network

    return hv_train_network.main(
        [
            "--config_file",
            str(ROOT / "configs" / "tiny_demo.toml"),
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            "out",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("flags", "hidden", "expected"),
    [
        (
            ["--xformers", "--split_attn"],
            ("xformers", "xformers.ops"),
            "error: --xformers needs the xformers package",
        ),
        (["--flash3"], ("flash_attn_interface",), "error: --flash3 needs the FlashAttention 3 package"),
    ],
)
def test_training_cli_the_only_refusal_is_the_missing_package(
    cached_demo, monkeypatch, capsys, restore_logging, flags, hidden, expected
):
    monkeypatch.chdir(cached_demo)
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    assert _train(*flags) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(expected), err
