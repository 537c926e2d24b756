"""The network module named by `--network_module`, imported with a one-line error when it cannot be used, and the
network built from the typed options: ours (networks.lora / loha / lokr) directly, any other through the kohya
interface musubi-tuner uses (networks/kohya.py)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .network_args import NetworkArgs, NetworkArgsError, parse_network_args
from .options import NetworkOptions

if TYPE_CHECKING:  # torch is imported by whoever builds a network, not by the option parser
    import torch
    from torch import nn

    from .base import AdapterNetwork
    from .kohya import KohyaNetwork

    Network = (
        AdapterNetwork | KohyaNetwork
    )  # what the trainer holds: ours, or a foreign one behind the adapter

# Ours: --network_args are parsed and checked strictly, per module (each refuses the keys it cannot honour).
OUR_MODULES = ("networks.lora", "networks.loha", "networks.lokr")


def is_ours(network_module: str) -> bool:
    return network_module in OUR_MODULES


def load_network_module(name: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        extra = (
            " (pip install lycoris-lora, or this project's [lycoris] extra)"
            if name.startswith("lycoris")
            else ""
        )
        raise NetworkArgsError(f"--network_module {name}: cannot import it ({e}){extra}") from None
    if not any(callable(getattr(module, f, None)) for f in ("create_network", "create_arch_network")):
        raise NetworkArgsError(
            f"--network_module {name}: it has neither create_network() nor create_arch_network(); "
            f"use one of {', '.join(OUR_MODULES)} or a kohya-style module such as lycoris.kohya"
        )
    return module


def parse_our_args(options: NetworkOptions) -> NetworkArgs:
    """--network_args checked as our --network_module reads them (its own refused keys): a typo stops here."""
    module = load_network_module(options.network_module)
    return parse_network_args(options.network_args, module.REFUSED_ARGS)


def build_network(
    options: NetworkOptions,
    model: nn.Module,
    device: torch.device | str,
    *,
    target_block_classes: Sequence[str],
    default_exclude_patterns: Sequence[str],
    run_options: Mapping[str, Any] | None = None,
) -> Network:
    """The network `options` describe for `model`, its weights on `device`: the one call of --network_module's
    create_network, for training, --list_lora_targets and the memory estimate. Ours are built, not applied;
    a foreign one is applied at once, as musubi-tuner does (`apply_to` then only checks the model). The caller
    names the model's block classes (networks/ knows no model); `run_options` (every option by name) is the
    `args` a foreign module's prepare_network gets."""
    module = load_network_module(options.network_module)
    if not is_ours(options.network_module):
        from .kohya import KohyaNetwork

        return KohyaNetwork(module, options, model, device, run_options)
    network: AdapterNetwork = module.create_network(
        1.0,
        options.network_dim,
        options.network_alpha,
        model,
        target_block_classes=target_block_classes,
        default_exclude_patterns=default_exclude_patterns,
        neuron_dropout=options.network_dropout,
        network_args=parse_network_args(options.network_args, module.REFUSED_ARGS),
        device=device,
    )
    return network
