"""The command line of hv_train_network.py: the parser built from the option groups (training/options/), and
the parsed `TrainConfig`.

Option names, meanings and defaults follow musubi-tuner's hv_train_network.py, so its users' command lines
and config files run unchanged (docs/options.md lists them all). `--config_file` is read by
training/config_file.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hv_common.cli import OneLineArgumentParser
from hv_common.option_types import steps_or_ratio  # noqa: F401 (the warmup rule, tested through here)
from hv_common.options import add_option_groups, config_from_values
from training.options import LR_SCHEDULERS, TrainConfig  # noqa: F401 (LR_SCHEDULERS: tested through here)

# The `--help` sections, in order ("": the parser's own list of options).
HELP_SECTIONS = (
    "model",
    "attention",
    "data",
    "LoRA network",
    "optimizer",
    "learning-rate schedule",
    "training",
    "timesteps and loss",
    "saving and resuming",
    "metadata of the LoRA file",
    "logging",
    "sample previews",
    "validation",
    "",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="hv_train_network.py",
        description="Train a LoRA for HunyuanVideo.",
        allow_abbrev=False,  # `--network_d 8` must not silently mean --network_dim
    )
    add_option_groups(parser, TrainConfig, HELP_SECTIONS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The command line, over `--config_file`'s values when one is given, as a TrainConfig.

    argparse errors exit 2 with one line; config file errors and contradictions raise UserError.
    """
    from training.config_file import read_config_file

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    namespace = parser.parse_args(argv)
    if namespace.config_file is not None:
        parser.set_defaults(**read_config_file(namespace.config_file, parser))
        namespace = parser.parse_args(argv)  # the file's values are now defaults: the command line wins
    config: TrainConfig = config_from_values(TrainConfig, vars(namespace))
    return config
