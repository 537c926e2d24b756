"""Every shipped config parses, so the docs' recipes never rot."""

from pathlib import Path

import pytest

from training.args import parse_args

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
TRAIN_CONFIGS = [p for p in CONFIGS if "dataset" not in p.name]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_training_configs_parse(path):
    args = parse_args(["--config_file", str(path)])
    assert (
        args.model.dit
        and args.data.dataset_config
        and args.saving.output_dir
        and args.network.network_module == "networks.lora"
    )
    if "24gb" in path.name:  # the bf16 DiT alone does not fit in 24 GB
        assert (
            args.memory.fp8_scaled
            and args.memory.blocks_to_swap
            and args.memory.gradient_checkpointing_cpu_offload
        )


def test_there_are_recipes():
    assert {p.name for p in TRAIN_CONFIGS} >= {
        "tiny_demo.toml",
        "hunyuan_720p_24gb.toml",
        "hunyuan_720p_80gb.toml",
    }
