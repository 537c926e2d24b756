"""Shared helpers for the LoRA tests: the tiny DiT on CPU, its inputs, and the 720p model on meta."""

from __future__ import annotations

import functools

import torch
from torch import nn

from hunyuan_model.config import get_preset
from hunyuan_model.model import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, build_dit
from networks.lora import LoRANetwork, create_network

NET_KW = {"target_block_classes": TARGET_BLOCK_CLASSES, "default_exclude_patterns": DEFAULT_EXCLUDE_PATTERNS}


@functools.lru_cache(maxsize=1)
def meta_720p() -> nn.Module:
    """The full 12.8 B layout, without memory. Shared: nothing the tests do to it changes it."""
    return build_dit(get_preset("hunyuan-video-t2v-720p"), device="meta")


def network_720p(*network_args: str, dim: int = 32, alpha: float = 16.0) -> LoRANetwork:
    return create_network(
        1.0, dim, alpha, meta_720p(), network_args=list(network_args), device="meta", **NET_KW
    )


def tiny_model(seed: int = 0) -> nn.Module:
    """The tiny DiT (hidden 64, 2 + 2 blocks) with random weights, frozen, in fp32 on the CPU."""
    torch.manual_seed(seed)
    return build_dit(get_preset("tiny"), device="cpu", dtype=torch.float32).requires_grad_(False)


def tiny_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = get_preset("tiny")
    return {
        "x": torch.randn(1, cfg.in_channels, 2, 8, 8, generator=g),
        "t": torch.tensor([500.0]),
        "text_states": torch.randn(1, 5, cfg.text_states_dim, generator=g),
        "text_mask": torch.tensor([[1, 1, 1, 1, 0]]),
        "text_states_2": torch.randn(1, cfg.text_states_dim_2, generator=g),
        "guidance": torch.tensor([4000.0]),
    }


def tiny_network(model: nn.Module, *network_args: str, dim: int = 4, alpha: float = 2.0, **kw) -> LoRANetwork:
    return create_network(1.0, dim, alpha, model, network_args=list(network_args), **NET_KW, **kw)


def applied_random_network(model: nn.Module, seed: int = 1) -> LoRANetwork:
    """A tiny LoRA applied to `model` with every weight random: lora_up starts at zero, and then no LoRA weight
    would matter to the gradients a test compares."""
    torch.manual_seed(seed)
    net = tiny_network(model)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    net.apply_to(model)
    return net


def normal_up_network(model: nn.Module, *network_args: str, seed: int = 0) -> LoRANetwork:
    """A tiny network on `model` (not applied) with lora_up drawn from N(0, 1): its update is not zero."""
    torch.manual_seed(seed)
    network = tiny_network(model, *network_args)
    for lora in network.loras:
        nn.init.normal_(lora.lora_up.weight)
    return network
