"""Command-line options of hv_train_network.py: an argparse builder that grows by groups, and a typed result.

Issue 5 adds the training options (and --config_file) as more `add_*_args` groups and `TrainArgs` fields;
`TrainArgs(**vars(namespace))` fails loudly if the two ever disagree.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a user error is `error: <one line>` on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())} (see --help)\n")


@dataclass(frozen=True)
class TrainArgs:
    dit: str | None = None
    network_module: str = "networks.lora"
    network_dim: int | None = None
    network_alpha: float = 1.0
    network_dropout: float | None = None
    network_args: tuple[str, ...] = ()
    learning_rate: float = 2.0e-6
    list_lora_targets: str | None = None


def _number(kind: type, check: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and check(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = expected  # argparse names the type in some messages
    return convert


positive_int = _number(int, lambda v: v > 0, "an integer > 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
probability = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--dit", help="DiT checkpoint (.safetensors, .pt, or a diffusers folder)")


def add_network_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA network")
    group.add_argument("--network_module", default="networks.lora", help="module with create_network()")
    group.add_argument("--network_dim", type=positive_int, help="LoRA rank (default 4)")
    group.add_argument(
        "--network_alpha", type=positive_float, default=1.0, help="LoRA alpha; scale = alpha/dim"
    )
    group.add_argument("--network_dropout", type=probability, help="dropout on the rank-r activations")
    group.add_argument(
        "--network_args",
        nargs="*",
        default=(),
        metavar="KEY=VALUE",
        help="e.g. loraplus_lr_ratio=4 \"exclude_patterns=[r'.*single_blocks.*']\" (see docs/network_args.md)",
    )


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimizer")
    group.add_argument("--learning_rate", type=positive_float, default=2.0e-6, help="learning rate")


def add_listing_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--list_lora_targets",
        nargs="?",
        const="table",
        choices=("table", "json"),
        help="print the modules the LoRA would wrap and its param groups, then stop (no weights are loaded)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="hv_train_network.py",
        description="Train a LoRA for HunyuanVideo.",
        allow_abbrev=False,  # `--network_d 8` must not silently mean --network_dim
    )
    for add in (add_model_args, add_network_args, add_optimizer_args, add_listing_args):
        add(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    namespace = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    namespace.network_args = tuple(namespace.network_args or ())
    return TrainArgs(**vars(namespace))
