"""diffusers' HunyuanVideoTransformer3DModel and our DiT at one small, deliberately odd width, with inputs:
shared by tests/hunyuan_model/test_diffusers_layout.py and tests/lora_files/test_layouts.py."""

from __future__ import annotations

import pytest
import torch

from hunyuan_model.config import DiTConfig

# Deliberately not the tiny preset: odd widths everywhere, so a hard-coded size would show.
CONFIG = DiTConfig(
    in_channels=4,
    out_channels=4,
    hidden_size=64,
    heads_num=2,
    mm_double_blocks_depth=2,
    mm_single_blocks_depth=2,
    rope_dim_list=(4, 14, 14),
    text_states_dim=24,
    text_states_dim_2=20,
    refiner_depth=2,
)


# The same architecture as CONFIG, in diffusers' terms.
DIFFUSERS_CONFIG = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=32,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=2,
    text_embed_dim=24,
    pooled_projection_dim=20,
    rope_axes_dim=(4, 14, 14),
)


def diffusers_model() -> torch.nn.Module:
    """diffusers' model at CONFIG's size with random weights (seeded); the calling test skips without diffusers."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(**DIFFUSERS_CONFIG).eval()
    with torch.no_grad():  # norms and zero-initialised layers too: every weight must matter
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def dit_inputs() -> dict[str, torch.Tensor]:
    """A batch of two for CONFIG, the second sample's text padded."""
    g = torch.Generator().manual_seed(1)
    return dict(
        x=torch.randn(2, 4, 3, 8, 6, generator=g),
        t=torch.tensor([300.0, 800.0]),
        text_states=torch.randn(2, 7, 24, generator=g),
        text_mask=torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]]),
        text_states_2=torch.randn(2, 20, generator=g),
        guidance=torch.tensor([6000.0, 3500.0]),
    )
