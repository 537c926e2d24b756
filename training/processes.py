"""Data parallel bookkeeping: the process group, one seed and one initial LoRA for every process, and the
gradient average (the DiT calls the LoRA modules itself, so no DDP wrapper ever sees a forward)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from training.options import BackendOptions, TrainConfig

logger = logging.getLogger(__name__)


def process_state(ddp_timeout_minutes: int | None = None):
    """accelerate's process state, made as Accelerator makes it: the first maker fixes it for the process (and
    its process group's timeout: --ddp_timeout), and `accelerate launch --cpu` (ACCELERATE_USE_CPU) must keep
    meaning gloo on the CPU."""
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    kwargs = {"timeout": timedelta(minutes=ddp_timeout_minutes)} if ddp_timeout_minutes else {}
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **kwargs)


def prepare_processes(config: TrainConfig) -> TrainConfig:
    """Before anything logs: only the main process speaks, and every process uses the same seed."""
    import dataclasses
    import secrets

    from accelerate.utils import broadcast_object_list

    state = process_state(config.training.ddp_timeout)
    if not state.is_main_process:
        logging.getLogger().setLevel(logging.ERROR)
    if config.training.seed is None:
        seed = broadcast_object_list([secrets.randbelow(2**31)])[0]
        logger.info("seed %d (--seed %d repeats this run)", seed, seed)
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))
    return config


def set_cuda_flags(backends: BackendOptions) -> None:
    """--cuda_allow_tf32, --cuda_cudnn_benchmark: torch's process-wide switches, set as musubi-tuner sets them
    (on a CPU too: they are flags, and a CPU run never reads them)."""
    if backends.cuda_allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        logger.info("TF32 allowed in CUDA matmuls and cuDNN (--cuda_allow_tf32)")
    if backends.cuda_cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        logger.info("cuDNN benchmark on (--cuda_cudnn_benchmark)")


def ddp_kwargs_handlers(backends: BackendOptions) -> list:
    """musubi-tuner's DistributedDataParallelKwargs for the Accelerator, when a --ddp_* flag asks for one."""
    from accelerate import DistributedDataParallelKwargs

    if not (backends.ddp_gradient_as_bucket_view or backends.ddp_static_graph):
        return []
    return [
        DistributedDataParallelKwargs(
            gradient_as_bucket_view=backends.ddp_gradient_as_bucket_view,
            static_graph=backends.ddp_static_graph,
        )
    ]


def ddp_flag_notes(backends: BackendOptions) -> list[str]:
    """One line per --ddp_* flag given: they tune a DDP wrapper, and this trainer has none (see
    average_gradients), so a run is the same with or without them; said rather than silently ignored."""
    given = {
        "ddp_gradient_as_bucket_view": backends.ddp_gradient_as_bucket_view,
        "ddp_static_graph": backends.ddp_static_graph,
    }
    return [
        f"--{name} changes nothing here: no DDP wrapper is used (the LoRA's gradients are averaged in one "
        "all-reduce per optimizer step), so there is no DDP for it to tune"
        for name, on in given.items()
        if on
    ]


def broadcast_parameters(accelerator, network: torch.nn.Module) -> None:
    """Every process starts from the main process's LoRA (what DDP's constructor would do): the same seed
    already gives the same initialisation, but a --network_weights file read on one disk and not another, or a
    future change of seeding, must not let the processes train different LoRAs."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    with torch.no_grad():
        for t in [*network.parameters(), *network.buffers()]:
            t.copy_(broadcast(t.detach().clone(), from_process=0))


def average_gradients(accelerator, params: list[torch.nn.Parameter]) -> None:
    """Data parallel: the mean of every process's gradients, in one all-reduce per optimizer step.

    accelerate's DDP wrapper cannot do it: the model's forward runs the LoRA modules, never the wrapper's
    forward, so DDP's gradient hooks stay disarmed (measured: each process kept its own gradients).
    Every process has the same parameters with gradients (same model, same shapes), so the lists match."""
    if accelerator.num_processes == 1 or not params:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [cast(torch.Tensor, p.grad) for p in params]  # every LoRA parameter has one after backward
    flat = accelerator.reduce(_flatten_dense_tensors(grads), reduction="mean")
    for g, averaged in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(averaged)
