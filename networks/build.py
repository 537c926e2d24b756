"""The network module named by `--network_module`, imported with a one-line error when it cannot be used, and the
LoRA network built from the typed options."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from .network_args import NetworkArgsError
from .options import NetworkOptions

if TYPE_CHECKING:  # torch is imported by whoever builds a network, not by the option parser
    import torch
    from torch import nn

    from .lora import LoRANetwork


def load_network_module(name: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise NetworkArgsError(f"--network_module {name}: cannot import it ({e})") from None
    if not callable(getattr(module, "create_network", None)):
        raise NetworkArgsError(f"--network_module {name}: it has no create_network(); use networks.lora")
    return module


def build_network(
    options: NetworkOptions,
    model: nn.Module,
    device: torch.device | str,
    *,
    target_block_classes: Sequence[str],
    default_exclude_patterns: Sequence[str],
) -> LoRANetwork:
    """The LoRA network `options` describe for `model` (built, not applied), its weights on `device`: the one
    call of --network_module's create_network, for training, --list_lora_targets and the memory estimate.
    The caller names the model's block classes (networks/ knows no model). Another --network_module gets the
    --network_args strings as musubi-tuner passes them, and returns a network that behaves like LoRANetwork."""
    module = load_network_module(options.network_module)
    network: LoRANetwork = module.create_network(
        1.0,
        options.network_dim,
        options.network_alpha,
        model,
        target_block_classes=target_block_classes,
        default_exclude_patterns=default_exclude_patterns,
        neuron_dropout=options.network_dropout,
        network_args=list(options.network_args),
        device=device,
    )
    return network
