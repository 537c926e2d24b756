"""--fp8_llm (hunyuan_model/text_encoders.py + fp8.py): the LLM's Linear weights are stored in float8_e4m3fn and
computed in the text encoder dtype; the embeddings come out close to the unquantised LLM's, with less memory."""

from pathlib import Path

import pytest
import torch
from torch import nn

from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_tiny_llm(out / "text_encoder")
    write_tiny_clip(out / "text_encoder_2")
    return out


def _bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_fp8_llm_stores_linear_weights_in_float8_and_encodes_close(tiny_dir):
    from hunyuan_model.fp8 import Fp8Linear
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    plain = HunyuanTextEncoders(tiny_dir / "text_encoder", tiny_dir / "text_encoder_2")
    fp8 = HunyuanTextEncoders(tiny_dir / "text_encoder", tiny_dir / "text_encoder_2", fp8_llm=True)

    linears = [m for m in fp8.llm.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, Fp8Linear) for m in linears)
    assert {m.weight.dtype for m in linears} == {torch.float8_e4m3fn}
    # norms and embeddings keep the text encoder dtype; CLIP is untouched
    others = {n: p.dtype for n, p in fp8.llm.named_parameters() if not n.endswith("proj.weight")}
    assert set(others.values()) == {torch.float32}, others
    assert {p.dtype for p in fp8.clip.parameters()} == {torch.float32}
    assert _bytes(fp8.llm) < 0.6 * _bytes(plain.llm)

    prompts = ["a red ball rolls across a blue floor", "a cat walks through a sunny garden"]
    a, b = plain.encode(prompts), fp8.encode(prompts)
    assert b.llm.dtype == torch.float32  # computed in the text encoder dtype
    assert torch.equal(a.llm_mask, b.llm_mask)
    assert not torch.equal(a.llm, b.llm)  # the quantisation is real
    valid = a.llm_mask
    cosine = torch.nn.functional.cosine_similarity(a.llm[valid], b.llm[valid], dim=-1)
    assert cosine.min() > 0.98, cosine.min()
    assert torch.equal(a.clip_pooled, b.clip_pooled)
