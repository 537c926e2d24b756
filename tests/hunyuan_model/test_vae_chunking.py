"""--vae_chunk_size and --vae_tiling / --vae_spatial_tile_sample_min_size on the VAE (hunyuan_model/vae.py):
chunked causal convs compute the same latents and pixels from smaller slices; tiling takes the tile size."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hunyuan_model.tiny_encoders import write_tiny_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "vae"
    write_tiny_vae(out)
    return out


def _round_trip(vae, frames, monkeypatch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Latents, decoded frames and the widest input any 3-D convolution saw."""
    from hunyuan_model.vae import decode_latents, encode_frames

    widths = []
    conv3d = F.conv3d

    def spy(x, *args, **kwargs):
        widths.append(x.shape[-1])
        return conv3d(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv3d", spy)
    latents = encode_frames(vae, frames, [torch.Generator().manual_seed(0)])
    pixels = decode_latents(vae, latents)
    monkeypatch.undo()
    return latents, pixels, max(widths)


def test_vae_chunk_size_gives_the_same_result_from_narrow_slices(vae_dir, monkeypatch):
    from hunyuan_model.vae import ChunkedConv3d, load_vae, set_vae_chunk_size

    frames = torch.randint(0, 256, (1, 5, 32, 128, 3), dtype=torch.uint8)
    vae = load_vae(vae_dir)
    latents, pixels, widest = _round_trip(vae, frames, monkeypatch)
    assert widest >= 128

    assert set_vae_chunk_size(vae, None) == 0
    assert not any(isinstance(m, ChunkedConv3d) for m in vae.modules())
    changed = set_vae_chunk_size(vae, 8)
    assert changed == sum(isinstance(m, ChunkedConv3d) for m in vae.modules()) > 20
    chunked_latents, chunked_pixels, chunked_widest = _round_trip(vae, frames, monkeypatch)
    # a slice is 8 output columns plus the kernel's overlap (the 1x1 quant convs at latent width 16 are plain)
    assert chunked_widest <= 16
    assert torch.allclose(chunked_latents, latents, atol=1e-5)
    assert (chunked_pixels.int() - pixels.int()).abs().max() <= 1
    assert set(vae.state_dict()) == set(load_vae(vae_dir).state_dict())  # same keys: a class swap


def test_chunked_conv_matches_a_strided_padded_conv():
    from hunyuan_model.vae import ChunkedConv3d

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 5, 9, 41)
    expected = conv(x)
    conv.__class__ = ChunkedConv3d
    for size in (2, 3, 5, 8, 16, 30):
        conv.chunk_size = size  # type: ignore[attr-defined]
        assert torch.allclose(conv(x), expected, atol=1e-6), size


def test_enable_vae_tiling_takes_the_tile_size(vae_dir):
    from hunyuan_model.vae import enable_vae_tiling, load_vae

    vae = load_vae(vae_dir)
    enable_vae_tiling(vae, None)
    assert not vae.use_tiling
    enable_vae_tiling(vae, 128)
    assert vae.use_tiling
    assert (vae.tile_sample_min_height, vae.tile_sample_min_width) == (128, 128)
    assert (vae.tile_sample_stride_height, vae.tile_sample_stride_width) == (96, 96)
