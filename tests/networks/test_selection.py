"""Which modules a network wraps (networks/selection.py through create_network), on the 720p layout (meta):
the default selection, include/exclude patterns, per-pattern rank and alpha, LoRA+ groups, the names."""

from __future__ import annotations

import logging
import re

import pytest
from lora_testing import NET_KW, network_720p
from torch import nn

from networks.lora import create_network
from networks.network_args import NetworkArgsError

SINGLE_10_ON = r"include_patterns=[r'.*single_blocks\.\d{2}\.linear.*']"

# --- selection on the full 720p layout --------------------------------------------------------------------


def test_default_selection_is_240_modules_without_modulation():
    network = network_720p()
    names = network.module_names
    assert len(names) == 240
    assert not any(re.search("img_mod|txt_mod|modulation", n) for n in names)
    assert names[:4] == [
        "double_blocks.0.img_attn_qkv",
        "double_blocks.0.img_attn_proj",
        "double_blocks.0.img_mlp.fc1",
        "double_blocks.0.img_mlp.fc2",
    ]
    assert len(network.selection.excluded) == 80  # 2 x 20 img/txt_mod + 40 modulation
    assert not any(n.startswith(("txt_in", "time_in", "final_layer")) for n in names)


def test_seed_examples_give_160_and_60():
    assert len(network_720p("exclude_patterns=[r'.*single_blocks.*']").loras) == 160
    network = network_720p("exclude_patterns=[r'.*']", SINGLE_10_ON)
    assert len(network.loras) == 60
    assert network.module_names[0] == "single_blocks.10.linear1"
    assert all(int(n.split(".")[1]) >= 10 for n in network.module_names)


def test_loraplus_gives_two_groups_of_240_at_lr_and_lr_times_ratio():
    groups = network_720p("loraplus_lr_ratio=4").prepare_optimizer_params(1e-4)
    assert [(g["kind"], g["lr"], len(g["params"])) for g in groups] == [
        ("lora", 1e-4, 240),
        ("lora_plus", 4e-4, 240),
    ]


def test_without_loraplus_one_group_holds_every_weight():
    groups = network_720p().prepare_optimizer_params(1e-4)
    assert [(g["kind"], g["lr"], len(g["params"])) for g in groups] == [("lora", 1e-4, 480)]


def test_include_rescues_modulation_layers():
    network = network_720p(r"include_patterns=[r'.*double_blocks\.\d+\.img_mod\.linear']")
    assert len(network.loras) == 260
    assert "double_blocks.7.img_mod.linear" in network.module_names
    assert "double_blocks.7.txt_mod.linear" not in network.module_names


def test_include_never_restricts():
    network = network_720p(r"include_patterns=[r'single_blocks\.0\.linear1']")
    assert len(network.loras) == 240


def test_exclude_then_include_mixed_with_other_keys():
    network = network_720p(
        "exclude_patterns=[r'.*single_blocks.*', r'.*double_blocks\\.[0-9]\\..*']",
        r"include_patterns=[r'single_blocks\.39\..*']",
        "loraplus_lr_ratio=2",
        "verbose=False",
    )
    # double blocks 10-19 (80) + single block 39: linear1, linear2 and its modulation (rescued) = 83
    assert len(network.loras) == 83
    assert "single_blocks.39.modulation.linear" in network.module_names
    assert "double_blocks.9.img_attn_qkv" not in network.module_names


def test_partial_pattern_matches_nothing_and_warns_with_the_fix(caplog):
    with caplog.at_level(logging.WARNING):
        network = network_720p("exclude_patterns=['single_blocks']")
    assert len(network.loras) == 240  # full match: 'single_blocks' is no module's whole name
    assert "'single_blocks'" in caplog.text
    assert "r'.*single_blocks.*'" in caplog.text


def test_pattern_matching_nothing_names_the_closest_modules(caplog):
    with caplog.at_level(logging.WARNING):
        network_720p("include_patterns=[r'double_blocks\\.0\\.img_atn_qkv']")
    assert "img_atn_qkv" in caplog.text
    assert "closest module names: double_blocks.0.img_attn_qkv" in caplog.text


def test_a_selection_that_wraps_nothing_is_an_error():
    with pytest.raises(NetworkArgsError, match="wraps no module"):
        network_720p("exclude_patterns=[r'.*']")


def test_a_model_without_target_blocks_is_an_error():
    with pytest.raises(NetworkArgsError, match="no Linear inside blocks of class"):
        create_network(1.0, 4, 1.0, nn.Sequential(nn.Linear(4, 4)), **NET_KW)


def test_per_pattern_rank_and_alpha_first_match_wins():
    network = network_720p(
        "rank_patterns={r'.*linear1': 8, r'.*single_blocks.*': 4, r'.*linear2': 64}",
        "alpha_patterns={r'.*single_blocks.*': 2}",
        dim=32,
        alpha=16,
    )
    loras = dict(zip(network.module_names, network.loras, strict=True))
    assert (loras["single_blocks.3.linear1"].lora_dim, loras["single_blocks.3.linear2"].lora_dim) == (8, 4)
    assert loras["double_blocks.3.img_mlp.fc1"].lora_dim == 32
    assert float(loras["single_blocks.3.linear2"].alpha) == 2.0
    assert loras["single_blocks.3.linear2"].scale == 2.0 / 4
    assert loras["double_blocks.3.img_mlp.fc1"].scale == 16.0 / 32
    assert tuple(loras["single_blocks.3.linear1"].lora_down.weight.shape) == (8, 3072)


def test_selection_knows_block_class_names_not_hunyuan_video():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.gate = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    model = nn.ModuleDict({"blocks": nn.ModuleList([Attention(), Attention()]), "head": nn.Linear(8, 8)})
    network = create_network(
        1.0, 2, 1.0, model, target_block_classes=("Attention",), default_exclude_patterns=(r".*gate",)
    )
    assert network.module_names == ["blocks.0.q", "blocks.0.k", "blocks.1.q", "blocks.1.k"]


def test_verbose_logs_modules_exclusions_and_groups(caplog):
    with caplog.at_level(logging.INFO, logger="networks"):
        network = network_720p("verbose=True", "loraplus_lr_ratio=4")
        network.prepare_optimizer_params(1e-4)
    text = caplog.text
    assert "lora double_blocks.0.img_attn_qkv: in=3072 out=9216 dim=32 alpha=16" in text
    assert "excluded double_blocks.0.img_mod.linear by '.*(img_mod|txt_mod|modulation).*'" in text
    assert "param group lora_plus: lr=0.0004, 240 tensors" in text


def test_lora_names_and_file_keys():
    network = network_720p()
    keys = set(network.state_dict())
    assert len(keys) == 3 * 240
    assert "lora_unet_double_blocks_0_img_mlp_fc1.lora_down.weight" in keys
    assert "lora_unet_single_blocks_39_linear2.lora_up.weight" in keys
    assert "lora_unet_single_blocks_39_linear2.alpha" in keys
