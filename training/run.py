"""Start-up: everything a training run is built from its configuration, once, in the order that fails fast
(options and files checked before the DiT's weights are read)."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hunyuan_model.block_swap import apply_block_swap
from hv_common.devices import DTYPES, parse_dtype
from hv_common.errors import UserError
from lora_files.io import load_network, rank_and_alpha
from training.flow import FlowSettings
from training.nonfinite import NonFiniteGuard
from training.options import FlowOptions, MemoryOptions, TrainConfig
from training.precision import apply_full_precision, resolve_mixed_precision
from training.processes import broadcast_parameters, ddp_kwargs_handlers, process_state, set_cuda_flags
from training.trackers import check_trackers

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.models import AutoencoderKLHunyuanVideo

    from dataset.train_dataset import CachedBatches
    from generation.previews import PreviewSampler
    from hunyuan_model.model import HYVideoDiffusionTransformer
    from networks.build import Network
    from run_report.page import RunReport
    from training.validation import Validator

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything built at start-up that the loop and the savers share, and the run's history."""

    config: TrainConfig
    accelerator: Accelerator
    model: HYVideoDiffusionTransformer
    network: Network
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: CachedBatches
    flow: FlowSettings
    max_steps: int
    output_dir: Path
    dataset_summary: list[dict]
    base_id: str
    dtype: torch.dtype
    guard: NonFiniteGuard  # the NaN/Inf guard (limit 0: off)
    log_dir: Path | None  # this run's tracker logs: <logging_dir>/<log_prefix><start time>
    losses: list[float] = field(default_factory=list)
    validations: list[dict] = field(default_factory=list)
    last_sample_step: int = -1
    # Built after the resume (they read what it restored) and before the first step; None: not asked for.
    validator: Validator | None = None
    sampler: PreviewSampler | None = None
    vae: AutoencoderKLHunyuanVideo | None = None
    report: RunReport | None = None  # main process only


def flow_settings(flow: FlowOptions) -> FlowSettings:
    return FlowSettings(
        timestep_sampling=flow.timestep_sampling,
        discrete_flow_shift=flow.discrete_flow_shift,
        sigmoid_scale=flow.sigmoid_scale,
        weighting_scheme=flow.weighting_scheme,
        logit_mean=flow.logit_mean,
        logit_std=flow.logit_std,
        mode_scale=flow.mode_scale,
        min_timestep=flow.min_timestep or 0.0,
        max_timestep=flow.max_timestep or 1000.0,
        preserve_distribution_shape=flow.preserve_distribution_shape,
        num_timestep_buckets=flow.num_timestep_buckets,
    )


def _require(**values: str | None) -> None:
    for name, value in values.items():
        if not value:
            raise UserError(f"--{name} is required for training")


def _load_batches(config: TrainConfig) -> tuple[CachedBatches, list[dict]]:
    from dataset.config import load_dataset_config
    from dataset.train_dataset import CachedBatches, CachedDatasetSpec

    assert config.data.dataset_config is not None  # _require checked it
    blueprint = load_dataset_config(config.data.dataset_config, check_media=False)
    specs = [CachedDatasetSpec.of(d) for d in blueprint.datasets]
    procs = process_state(config.training.ddp_timeout)  # data parallel: each process trains its share
    batches = CachedBatches(
        specs,
        seed=config.training.seed or 0,
        num_processes=procs.num_processes,
        process_index=procs.process_index,
    )
    summary = [
        {"cache_directory": str(s.cache_directory), "batch_size": s.batch_size, "num_repeats": s.num_repeats}
        for s in specs
    ]
    return batches, summary


def _max_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    updates_per_epoch = math.ceil(batches_per_epoch / config.training.gradient_accumulation_steps)
    if config.training.max_train_epochs:
        return config.training.max_train_epochs * updates_per_epoch
    return config.training.max_train_steps


def _check_attention(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> str:
    """The attention backend the flags choose, checked (package, CUDA, dtype, trainable) before the DiT loads."""
    from hunyuan_model.attention import AttentionBackendError, check_attention_backend

    backend = config.memory.attention_backend
    mixed = DTYPES.get(config.training.mixed_precision or "no")
    try:
        check_attention_backend(backend, device, dtype=mixed or dtype, training=True)
    except AttentionBackendError as e:
        raise UserError(str(e)) from None
    if backend != "sdpa":
        logger.info("attention: %s", backend)
    return backend


def swap_and_compile(memory: MemoryOptions, model: HYVideoDiffusionTransformer, device: torch.device) -> None:
    """--blocks_to_swap, then --compile: after the LoRA is applied (the compiled blocks trace through it)."""
    apply_block_swap(model, memory.blocks_to_swap or 0, device, memory.use_pinned_memory_for_block_swap)
    if memory.block_swap_h2d_only:  # musubi-tuner's experimental mode is this swapper's only one
        logger.info("--block_swap_h2d_only: block swap copies host->device only, always (frozen CPU masters)")
    if memory.img_in_txt_in_offloading:  # after the swap, which moves all else to the device
        model.enable_img_in_txt_in_offloading()
    if memory.dynamo_compile_kwargs is not None:
        model.compile_whole(memory.dynamo_compile_kwargs)  # --dynamo_*: musubi-tuner's accelerate plugin
    if not memory.compile:
        return
    if memory.compile_cache_size_limit:
        torch._dynamo.config.cache_size_limit = memory.compile_cache_size_limit
    try:
        model.compile_blocks(
            memory.compile_backend,
            memory.compile_mode,
            memory.compile_dynamic_shapes,
            memory.compile_fullgraph,
        )
    except torch._dynamo.exc.InvalidBackend:
        known = ", ".join(torch._dynamo.list_backends())
        raise UserError(f"--compile_backend {memory.compile_backend}: unknown; known: {known}") from None
    logger.info(
        "compiling each DiT block (backend %s, mode %s): the first steps are slow",
        memory.compile_backend,
        memory.compile_mode,
    )


def _check_in_channels(config: TrainConfig) -> None:
    """--dit_in_channels against the DiT's headers; an I2V DiT's previews would need a first image per prompt."""
    from hunyuan_model.checkpoint import read_dit_config
    from hunyuan_model.sampler import I2V_IN_CHANNELS

    dit, wanted = config.model.dit, config.model.dit_in_channels
    assert dit is not None
    channels = read_dit_config(dit).in_channels
    if channels != wanted:
        raise UserError(f"--dit_in_channels {wanted}: --dit {dit} has {channels} input channels")
    if wanted == I2V_IN_CHANNELS and config.sampling.sample_prompts:
        raise UserError(
            "--sample_prompts with --dit_in_channels 32: previews of an I2V DiT are not supported here yet"
        )


def build_run(config: TrainConfig) -> Run:
    from accelerate import Accelerator

    from dataset.cache_files import file_identity
    from hunyuan_model.attention import set_attention_backend
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.config import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES
    from hv_common.input_checks import check_output_dir
    from hv_common.options import option_values
    from networks.build import build_network
    from training.base_weights import check_base_weights, merge_base_weights
    from training.list_targets import check_patterns_early
    from training.optim import build_optimizer, build_schedule
    from training.step import check_max_norm_support

    model_options, memory, saving = config.model, config.memory, config.saving
    _require(dit=model_options.dit, dataset_config=config.data.dataset_config, output_dir=saving.output_dir)
    assert model_options.dit is not None and saving.output_dir is not None
    if not Path(model_options.dit).exists():
        raise UserError(f"--dit {model_options.dit}: no such file or folder")
    check_output_dir(saving.output_dir)
    check_trackers(config.logging)  # a missing tracker package: before any file is read
    _check_in_channels(config)
    check_patterns_early(
        config.network, model_options.dit
    )  # headers only: a bad pattern fails before loading
    check_base_weights(config.training)
    log_dir = config.logging.run_log_dir(time.time())
    flow = flow_settings(config.flow)
    batches, summary = _load_batches(config)
    accelerator = Accelerator(
        mixed_precision=config.training.mixed_precision,  # None: accelerate's setting, as in musubi-tuner
        # the loop accumulates gradients itself (training/step.py): here one micro-batch is one step
        log_with=config.logging.trackers,
        project_dir=None if log_dir is None else str(log_dir),
        kwargs_handlers=ddp_kwargs_handlers(config.backends),
    )
    set_cuda_flags(config.backends)
    config = resolve_mixed_precision(config, accelerator)
    if config.training.seed is not None:
        random.seed(config.training.seed)
        torch.manual_seed(config.training.seed)
    device = accelerator.device
    default_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = parse_dtype(model_options.dit_dtype, default=default_dtype)
    backend = _check_attention(config, device, dtype)
    if device.type == "cuda" and accelerator.is_main_process:
        from training.estimate_memory import log_estimate

        log_estimate(config)  # from shapes, before the weights load: what fits is known before 25 GB are read
    swap = bool(memory.blocks_to_swap) and device.type != "cpu"
    if config.backends.disable_numpy_memmap:
        logger.info("reading the DiT with plain reads, not memory-mapped (--disable_numpy_memmap)")
    # swapped blocks stay in CPU memory: load there, enable_block_swap moves the rest (13 B may not fit first)
    model = load_dit(
        model_options.dit,
        dtype=dtype,
        device="cpu" if swap else device,
        fp8_base=memory.fp8_base,
        fp8_scaled=memory.fp8_scaled,
        work_device=device,
        mmap=not config.backends.disable_numpy_memmap,
    )
    merge_base_weights(model, config.training, model_options.dit)  # before the LoRA wraps the Linears
    set_attention_backend(model, backend)
    model.requires_grad_(False)
    if memory.gradient_checkpointing:
        model.enable_gradient_checkpointing(cpu_offload=memory.gradient_checkpointing_cpu_offload)

    network_options = config.network
    if network_options.dim_from_weights and network_options.network_weights:
        rank, alpha = rank_and_alpha(network_options.network_weights)  # as musubi-tuner: the file's, not ours
        network_options = replace(network_options, network_dim=rank, network_alpha=alpha)
        logger.info(
            "--dim_from_weights: rank %d, alpha %g from %s", rank, alpha, network_options.network_weights
        )
    network = build_network(
        network_options,
        model,
        device,
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        run_options=option_values(config),  # a foreign module's prepare_network(args) reads them
    )
    if config.network.network_weights:
        load_network(network, config.network.network_weights)
    network.apply_to(model)
    network.train()
    check_max_norm_support(network, config.training.scale_weight_norms)
    apply_full_precision(
        network, accelerator, config
    )  # --full_bf16/--full_fp16, before the optimizer sees it
    swap_and_compile(memory, model, device)

    opt = config.optimizer
    optimizer = build_optimizer(
        opt.optimizer_type or "AdamW",
        network.prepare_optimizer_params(opt.learning_rate),
        opt.learning_rate,
        opt.optimizer_args or (),
    )
    max_steps = _max_steps(config, len(batches))
    # One scheduler step per optimizer step (the optimizer step calls it): a scheduler prepared by accelerate
    # would step once per process, and a schedule stretched to match is off by one step per process.
    scheduler = build_schedule(optimizer, opt, max_steps)
    # The network is not prepared: the DiT calls the LoRA modules itself, so a DDP wrapper would never see a
    # forward (it averaged nothing: average_gradients does) and would only cost its gradient buckets, a
    # second copy of every LoRA gradient on the GPU. The network was created on the device already.
    optimizer = accelerator.prepare(optimizer)
    broadcast_parameters(accelerator, network)
    return Run(
        config=config,
        accelerator=accelerator,
        model=model,
        network=network,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        flow=flow,
        max_steps=max_steps,
        output_dir=Path(saving.output_dir),
        dataset_summary=summary,
        base_id=file_identity(model_options.dit),
        dtype=dtype,
        guard=NonFiniteGuard(config.training.max_nonfinite_steps),
        log_dir=log_dir,
    )


def build_sampler(
    config: TrainConfig, device: torch.device
) -> tuple[PreviewSampler, AutoencoderKLHunyuanVideo]:
    """Prompts are encoded once and the encoders freed; the VAE waits on the CPU."""
    from generation.previews import PreviewSampler
    from hunyuan_model.vae import enable_vae_tiling, load_vae, set_vae_chunk_size

    m = config.model
    _require(vae=m.vae, text_encoder1=m.text_encoder1, text_encoder2=m.text_encoder2)
    assert config.sampling.sample_prompts and m.vae and m.text_encoder1 and m.text_encoder2
    gpu_default = torch.float16 if device.type == "cuda" else torch.float32
    sampler = PreviewSampler.from_files(
        config.sampling.sample_prompts,
        m.text_encoder1,
        m.text_encoder2,
        output_name=config.saving.output_name,
        device=device,
        dtype=parse_dtype(m.text_encoder_dtype, default=gpu_default),
        fp8_llm=m.fp8_llm,
    )
    vae = load_vae(m.vae, dtype=parse_dtype(m.vae_dtype, default=gpu_default), device="cpu")
    if m.vae_chunk_size:
        set_vae_chunk_size(vae, m.vae_chunk_size)
    enable_vae_tiling(vae, m.vae_tile_size)
    return sampler, vae
