"""Process-wide settings: --cuda_allow_tf32 and --cuda_cudnn_benchmark set torch's flags, the --ddp_* flags
reach the Accelerator as musubi-tuner's DistributedDataParallelKwargs and are said to change nothing here."""

from __future__ import annotations

import pytest
import torch
from accelerate import DistributedDataParallelKwargs

from training.options import BackendOptions
from training.processes import ddp_flag_notes, ddp_kwargs_handlers, set_cuda_flags


@pytest.fixture
def cuda_flags():
    """Leave torch's process-wide flags as they were."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    ) = saved


def _flags() -> tuple[bool, bool, bool]:
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )


@pytest.mark.usefixtures("cuda_flags")
def test_cuda_flags_are_set_as_asked():
    set_cuda_flags(BackendOptions())
    assert _flags() == (False, False, False)
    set_cuda_flags(BackendOptions(cuda_allow_tf32=True))
    assert _flags() == (True, True, False)
    set_cuda_flags(BackendOptions(cuda_cudnn_benchmark=True))
    assert _flags() == (True, True, True)


def test_ddp_flags_reach_the_accelerators_kwargs_handler():
    assert ddp_kwargs_handlers(BackendOptions()) == []
    (handler,) = ddp_kwargs_handlers(BackendOptions(ddp_static_graph=True))
    assert isinstance(handler, DistributedDataParallelKwargs)
    assert handler.to_kwargs() == {"static_graph": True}  # to_kwargs: what differs from DDP's defaults
    (handler,) = ddp_kwargs_handlers(BackendOptions(ddp_gradient_as_bucket_view=True, ddp_static_graph=True))
    assert handler.to_kwargs() == {"gradient_as_bucket_view": True, "static_graph": True}


def test_each_ddp_flag_is_said_to_change_nothing():
    assert ddp_flag_notes(BackendOptions()) == []
    notes = ddp_flag_notes(BackendOptions(ddp_gradient_as_bucket_view=True, ddp_static_graph=True))
    assert [n.split()[0] for n in notes] == ["--ddp_gradient_as_bucket_view", "--ddp_static_graph"]
    assert all("changes nothing here: no DDP wrapper" in n for n in notes)
