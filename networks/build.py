"""The network module named by `--network_module`, imported with a one-line error when it cannot be used."""

from __future__ import annotations

import importlib
from types import ModuleType

from .network_args import NetworkArgsError


def load_network_module(name: str) -> ModuleType:
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise NetworkArgsError(f"--network_module {name}: cannot import it ({e})") from None
    if not callable(getattr(module, "create_network", None)):
        raise NetworkArgsError(f"--network_module {name}: it has no create_network(); use networks.lora")
    return module
