"""--use_pinned_memory_for_block_swap: the swapped blocks' CPU copies pinned (default: pageable, as in
musubi-tuner), from the trainer and hv_generate_video.py. Pinning needs CUDA: faked here (pin_memory recorded)."""

from __future__ import annotations

import pytest
import torch
from lora_testing import tiny_model

from generation.generate import _swap_offload_compile
from generation.options import ComputeOptions, build_parser
from hunyuan_model.block_swap import BlockSwapper
from hv_common.options import options_from
from training.args import parse_args
from training.run import swap_and_compile


@pytest.fixture
def pinned(monkeypatch):
    """Tensor.pin_memory records what it pins (a CPU-only torch cannot pin) and CUDA is said to be there."""
    calls = []

    def pin_memory(self, device=None):
        calls.append(self.shape)
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return calls


@pytest.mark.parametrize("pin", [True, False])
def test_the_masters_are_pinned_only_when_asked(pinned, pin):
    model = tiny_model()
    blocks = model.blocks()
    n_tensors = sum(1 for b in blocks[-2:] for _ in [*b.parameters(), *b.buffers()])
    swapper = BlockSwapper(blocks, 2, "cpu", pin_memory=pin)
    assert swapper.pinned is pin
    assert len(pinned) == (n_tensors if pin else 0)
    swapper.restore()


class _Captured(Exception):
    pass


@pytest.mark.parametrize("pin", [True, False])
def test_trainer_and_generation_pass_it_to_the_swap(monkeypatch, pin):
    seen = []

    def enable_block_swap(self, n, device, pin_memory=False):
        seen.append((n, pin_memory))

    monkeypatch.setattr(type(tiny_model()), "enable_block_swap", enable_block_swap)
    flag = ["--use_pinned_memory_for_block_swap"] if pin else []
    cuda = torch.device("cuda")  # never touched: enable_block_swap is the fake above
    swap_and_compile(parse_args(["--blocks_to_swap", "2", *flag]).memory, tiny_model(), cuda)
    required = [
        "--dit",
        "d",
        "--text_encoder1",
        "a",
        "--text_encoder2",
        "b",
        "--prompt",
        "p",
        "--save_path",
        "o",
    ]
    compute = options_from(
        ComputeOptions, build_parser().parse_args([*required, "--blocks_to_swap", "2", *flag])
    )
    _swap_offload_compile(compute, tiny_model(), cuda)
    assert seen == [(2, pin), (2, pin)]
