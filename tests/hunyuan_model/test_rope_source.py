"""The DiT's RoPE split comes from the file where the file states it (diffusers' config.json `rope_axes_dim`, our
`hv_rope_dim_list` metadata), and is derived from the head width, logged once, only where it does not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import merge_lora
from hunyuan_model import rope_source
from hunyuan_model.checkpoint import load_dit, read_dit_config
from hunyuan_model.config import DiTConfig, get_preset, rope_dims_for
from hunyuan_model.errors import CheckpointError
from hunyuan_model.inspect import describe
from hunyuan_model.model import build_dit
from hunyuan_model.rope_source import ROPE_METADATA_KEY, read_rope_split
from hunyuan_model.tiny import tiny_dit_state_dict, write_tiny_dit

diffusers = pytest.importorskip("diffusers")

STATED = (8, 12, 12)  # head width 32; the rule derives (4, 14, 14)
CONFIG = DiTConfig(
    in_channels=4,
    out_channels=4,
    hidden_size=64,
    heads_num=2,
    mm_double_blocks_depth=1,
    mm_single_blocks_depth=1,
    rope_dim_list=STATED,
    text_states_dim=24,
    text_states_dim_2=20,
    refiner_depth=1,
)
DIFFUSERS_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=32,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    text_embed_dim=24,
    pooled_projection_dim=20,
    rope_axes_dim=STATED,
)


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory) -> Path:
    """What diffusers' save_pretrained writes: config.json (with rope_axes_dim) and the weights."""
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(**DIFFUSERS_CONFIG)
    with torch.no_grad():  # every weight matters, the zero-initialised ones too
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("diffusers") / "transformer"
    model.save_pretrained(folder, safe_serialization=True)
    assert json.loads((folder / "config.json").read_text())["rope_axes_dim"] == list(STATED)
    return folder


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return dict(
        x=torch.randn(1, 4, 3, 8, 6, generator=g, dtype=torch.float64),
        t=torch.tensor([300.0], dtype=torch.float64),
        text_states=torch.randn(1, 5, 24, generator=g, dtype=torch.float64),
        text_mask=torch.ones(1, 5, dtype=torch.long),
        text_states_2=torch.randn(1, 20, generator=g, dtype=torch.float64),
        guidance=torch.tensor([6000.0], dtype=torch.float64),
    )


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**_inputs())


def test_diffusers_folder_loads_with_its_rope_axes_dim(diffusers_folder):
    loaded = load_dit(diffusers_folder, dtype=torch.float64)
    assert loaded.config.rope_dim_list == STATED and read_dit_config(diffusers_folder).rope_dim_list == STATED
    weights = {k: v.clone() for k, v in loaded.state_dict().items()}

    def built(rope: tuple[int, int, int]) -> torch.nn.Module:
        model = build_dit(DiTConfig(**{**CONFIG.__dict__, "rope_dim_list": rope}), device="meta")
        model.load_state_dict(weights, strict=True, assign=True)
        return model

    ours = _output(loaded)
    assert torch.equal(ours, _output(built(STATED)))
    # the split the rule derives gives another output: what loading did before the file was read
    assert (ours - _output(built(rope_dims_for(32)))).abs().max().item() > 1e-6


def test_a_file_without_a_stated_split_derives_it_and_logs_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(rope_source, "_logged_widths", set())
    path = tmp_path / "plain.safetensors"
    save_file(tiny_dit_state_dict(), str(path))  # no metadata: another tool's file
    assert read_rope_split(path) is None
    with caplog.at_level(logging.INFO, logger="hunyuan_model.rope_source"):
        assert read_dit_config(path).rope_dim_list == rope_dims_for(32)
        load_dit(path)
    records = [r for r in caplog.records if r.name == "hunyuan_model.rope_source"]
    assert len(records) == 1 and "[4, 14, 14] for head width 32" in records[0].getMessage()
    assert describe(str(path))["rope_split"] == "derived from the head width"


def test_tiny_file_states_its_split_and_round_trips(tmp_path):
    path = write_tiny_dit(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()[ROPE_METADATA_KEY]) == list(get_preset("tiny").rope_dim_list)
    assert read_rope_split(path) == get_preset("tiny").rope_dim_list
    assert load_dit(path).config == get_preset("tiny")
    assert describe(str(path))["rope_split"] == "stated by the file"


def test_merged_dit_carries_the_split_of_its_base(diffusers_folder, tmp_path):
    """merge_lora.py on the diffusers folder: the merged single file (original layout) states (8, 12, 12)."""
    down, up = torch.randn(2, 64) * 0.1, torch.randn(192, 2) * 0.1
    lora = tmp_path / "lora.safetensors"
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file(
        {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)},
        str(lora),
    )
    out = tmp_path / "merged.safetensors"
    argv = ["--dit", str(diffusers_folder), "--lora_weight", str(lora), "--save_merged_model", str(out)]
    channels = str(
        read_dit_config(diffusers_folder).in_channels
    )  # this tiny one's; --dit_in_channels checks it
    assert merge_lora.main([*argv, "--dit_in_channels", channels]) == 0
    assert read_rope_split(out) == STATED
    assert read_dit_config(out).rope_dim_list == STATED


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([8, 12, 10], "sums to 30, not the head width 32"),
        ([8, 24], "three positive even integers"),
        ("big", "three positive even integers"),
        ([7, 13, 12], "three positive even integers"),
    ],
)
def test_a_bad_stated_split_is_one_line(diffusers_folder, tmp_path, value, fragment):
    folder = tmp_path / "transformer"
    folder.mkdir()
    for item in diffusers_folder.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "config.json").unlink()
    config = json.loads((diffusers_folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_axes_dim": value}))
    with pytest.raises(CheckpointError) as info:
        read_dit_config(folder)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
