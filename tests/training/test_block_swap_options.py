"""musubi-tuner's --block_swap_h2d_only and --block_swap_ring_size: this block swap is always host->device only
with two blocks resident, so the first says so in the log and the second refuses any other ring size."""

from __future__ import annotations

import logging

import pytest
import torch
from lora_testing import tiny_model

import hv_train_network
from hv_common.errors import UserError
from training.args import parse_args
from training.run import swap_and_compile


def test_h2d_only_is_how_the_swap_always_works_and_the_log_says_so(caplog):
    config = parse_args(["--blocks_to_swap", "2", "--block_swap_h2d_only"])
    assert config.memory.block_swap_h2d_only
    with caplog.at_level(logging.INFO, logger="training.run"):
        swap_and_compile(config.memory, tiny_model(), torch.device("cpu"))
    assert any("--block_swap_h2d_only" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="training.run"):
        swap_and_compile(parse_args(["--blocks_to_swap", "2"]).memory, tiny_model(), torch.device("cpu"))
    assert not any("--block_swap_h2d_only" in r.getMessage() for r in caplog.records)


def test_the_ring_size_this_swap_has_is_accepted_and_another_is_one_line(capsys):
    assert parse_args(["--block_swap_ring_size", "2"]).memory.block_swap_ring_size == 2
    with pytest.raises(UserError, match=r"^--block_swap_ring_size is not supported here: this block swap"):
        parse_args(["--block_swap_ring_size", "1"])
    assert hv_train_network.main(["--block_swap_ring_size", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --block_swap_ring_size is not supported here")
