"""The trainer's preview encoders and VAE (training/run.py build_sampler) take musubi-tuner's options:
--text_encoder_dtype, --fp8_llm, --vae_chunk_size, --vae_tiling, --vae_spatial_tile_sample_min_size."""

from pathlib import Path

import pytest
import torch
from demo_run import demo_argv

from training.args import parse_args


@pytest.fixture
def prompts(cached_demo, monkeypatch, tmp_path) -> Path:
    monkeypatch.chdir(cached_demo)
    path = tmp_path / "prompts.txt"
    path.write_text("a red ball rolls across a blue floor --w 64 --h 64 --f 1 --s 2\n")
    return path


def _sampler(prompts: Path, tmp_path: Path, *flags: str):
    from training.run import build_sampler

    config = parse_args(demo_argv(tmp_path / "out", "--sample_prompts", str(prompts), *flags))
    return build_sampler(config, torch.device("cpu"))


def test_preview_encoders_take_the_dtype_and_fp8(prompts, tmp_path):
    plain, _ = _sampler(prompts, tmp_path)
    bf16, _ = _sampler(prompts, tmp_path, "--text_encoder_dtype", "bfloat16")
    fp8, _ = _sampler(prompts, tmp_path, "--fp8_llm")
    reference = plain.prepared[0].embeddings
    assert reference.llm.dtype == torch.float32  # unset on a CPU: float32
    assert bf16.prepared[0].embeddings.llm.dtype == torch.bfloat16
    quantised = fp8.prepared[0].embeddings
    assert quantised.llm.dtype == torch.float32 and not torch.equal(quantised.llm, reference.llm)
    valid = reference.llm_mask[0]
    cosine = torch.nn.functional.cosine_similarity(quantised.llm[0, valid], reference.llm[0, valid], dim=-1)
    assert cosine.min() > 0.98


@pytest.mark.parametrize(
    ("flags", "chunked", "tile"),
    [
        ((), False, None),
        (("--vae_chunk_size", "16"), True, None),
        (("--vae_chunk_size", "0"), False, None),  # 0: off, as in musubi-tuner
        (("--vae_tiling",), False, 256),
        (("--vae_spatial_tile_sample_min_size", "128"), False, 128),  # giving the size enables tiling
    ],
)
def test_preview_vae_takes_chunking_and_tiling(prompts, tmp_path, monkeypatch, flags, chunked, tile):
    import generation.previews as previews
    from hunyuan_model.vae import ChunkedConv3d

    monkeypatch.setattr(previews, "encode_prompts", lambda prompts, *args, **kwargs: [])  # the VAE alone
    _, vae = _sampler(prompts, tmp_path, *flags)
    convs = [m for m in vae.modules() if isinstance(m, ChunkedConv3d)]
    assert bool(convs) is chunked and all(m.chunk_size == 16 for m in convs)
    assert vae.use_tiling is (tile is not None)
    if tile is not None:
        assert vae.tile_sample_min_width == tile
