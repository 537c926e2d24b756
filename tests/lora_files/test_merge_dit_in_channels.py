"""merge_lora.py --dit_in_channels (musubi-tuner's, default 16): the DiT's input channels, 32 for SkyReels V1
I2V; a DiT with other channels than it says is one line, exit 2, nothing written."""

from __future__ import annotations

import torch
from generate_testing import write_i2v_dit
from safetensors.torch import load_file, save_file

import merge_lora


def test_an_i2v_dit_merges_with_32_and_is_refused_with_the_default_16(tmp_path, capsys):
    dit = write_i2v_dit(tmp_path)
    lora = tmp_path / "lora.safetensors"
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file(
        {f"{key}.lora_down.weight": torch.ones(4, 64), f"{key}.lora_up.weight": torch.ones(192, 4)}, lora
    )
    out = tmp_path / "merged.safetensors"
    argv = ["--dit", str(dit), "--lora_weight", str(lora), "--save_merged_model", str(out)]
    assert merge_lora.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --dit_in_channels 16:" in err and "has 32 input channels" in err and not out.exists()
    assert merge_lora.main([*argv, "--dit_in_channels", "32"]) == 0
    merged, base = load_file(out), load_file(dit)
    assert merged["img_in.proj.weight"].shape[1] == 32
    assert not torch.equal(
        merged["double_blocks.0.img_attn_qkv.weight"], base["double_blocks.0.img_attn_qkv.weight"]
    )
