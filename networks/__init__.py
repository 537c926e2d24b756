"""LoRA networks: `--network_args` parsing and the LoRA modules, for any model made of named `nn.Module`s.

Nothing here knows HunyuanVideo: the caller names the block classes to search and the default exclusion.
"""

from .network_args import NetworkArgs, NetworkArgsError, parse_network_args

__all__ = ["NetworkArgs", "NetworkArgsError", "parse_network_args"]
