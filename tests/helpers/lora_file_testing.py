"""Shared by the tests of lora_files/ (test_apply, test_merge, test_convert, test_layouts): a trained-looking
network on a model, a LoRA file's weight updates and their comparison, a LoRA of another model, the `error:` line.
"""

from __future__ import annotations

import torch
from lora_testing import tiny_network
from safetensors.torch import save_file

from lora_files.io import load_lora

ALPHA, DIM = 3.0, 4  # alpha != dim: a forgotten scale shows


def trained_network(model, *network_args: str, seed: int = 3):
    """A network on `model` with trained-looking (non-zero) lora_up weights."""
    network = tiny_network(model, *network_args, dim=DIM, alpha=ALPHA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in network.loras:
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g) * 0.1)
    return network


def deltas(path) -> dict[str, torch.Tensor]:
    return {name: f.delta() for name, f in load_lora(path).weights.items()}


def assert_same_deltas(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def foreign_lora(path) -> None:
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
        },
        path,
    )
