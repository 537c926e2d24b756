"""hunyuan_model/vae.py: the tiny VAE loads from a folder, one safetensors file or the original .pt and encodes
the same; other files are one clear error."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hunyuan_model.errors import CheckpointError
from hunyuan_model.tiny_encoders import write_tiny_vae


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder with the tiny VAE in vae/."""
    out = tmp_path_factory.mktemp("tiny")
    write_tiny_vae(out / "vae")
    return out


def test_vae_loads_from_folder_safetensors_and_pt(tiny_dir, tmp_path):
    from hunyuan_model.vae import encode_frames, load_vae

    folder = load_vae(tiny_dir / "vae")
    sd = {k: v.contiguous() for k, v in folder.state_dict().items()}
    single = tmp_path / "hunyuan_video_vae_bf16.safetensors"
    save_file(sd, str(single))
    original = tmp_path / "pytorch_model.pt"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in sd.items()}}, original)
    frames = torch.randint(0, 256, (1, 9, 32, 48, 3), dtype=torch.uint8)
    reference = encode_frames(folder, frames, [torch.Generator().manual_seed(0)])
    assert reference.shape == (1, 16, 3, 4, 6)  # 4x time (causal: 1 + 8/4), 8x space
    for path in (single, original):
        vae = load_vae(path)
        assert tuple(vae.config.block_out_channels) == tuple(folder.config.block_out_channels)
        again = encode_frames(vae, frames, [torch.Generator().manual_seed(0)])
        assert torch.equal(again, reference), path


def test_vae_rejects_other_files(tiny_dir, tmp_path):
    from hunyuan_model.vae import load_vae

    dit_like = tmp_path / "dit.safetensors"
    save_file({"img_in.proj.weight": torch.zeros(2, 2)}, str(dit_like))
    with pytest.raises(CheckpointError, match="not a HunyuanVideo VAE: 1 keys, first 'img_in.proj.weight'"):
        load_vae(dit_like)
    with pytest.raises(CheckpointError, match="VAE not found"):
        load_vae(tmp_path / "missing")
