"""The trainer's --dit_in_channels (musubi-tuner's, default 16): checked against the DiT; 32 trains a SkyReels
V1 I2V DiT with the clean first latent frame as its extra 16 input channels."""

from __future__ import annotations

import torch
from demo_run import demo_argv
from generate_testing import write_i2v_dit
from safetensors.torch import load_file

import hv_train_network
from hunyuan_model.sampler import i2v_input


def test_i2v_input_adds_the_clean_first_frame_as_channels_and_zeros_after():
    noisy, clean = torch.randn(2, 16, 3, 4, 6), torch.randn(2, 16, 3, 4, 6)
    x = i2v_input(noisy, clean)
    assert x.shape == (2, 32, 3, 4, 6)
    assert torch.equal(x[:, :16], noisy) and torch.equal(x[:, 16:, :1], clean[:, :, :1])
    assert not x[:, 16:, 1:].any()


def test_an_i2v_dit_trains_with_32_and_is_refused_with_the_default(
    cached_demo, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(cached_demo)
    dit = write_i2v_dit(tmp_path)
    out = tmp_path / "out"
    assert hv_train_network.main(demo_argv(out, "--dit", str(dit), steps=1)) == 2
    err = capsys.readouterr().err
    assert "error: --dit_in_channels 16:" in err and "has 32 input channels" in err
    assert hv_train_network.main(demo_argv(out, "--dit", str(dit), "--dit_in_channels", "32", steps=1)) == 0
    (lora,) = out.glob("*.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in load_file(lora).values())
    assert (
        hv_train_network.main(demo_argv(out, "--dit_in_channels", "32", steps=1)) == 2
    )  # the 16-channel DiT
    assert "--dit_in_channels 32:" in capsys.readouterr().err
