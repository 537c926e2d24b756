"""The training loop: cached batches -> flow-matching loss on the DiT with a LoRA -> LoRA files and states."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hunyuan_model.block_swap import apply_block_swap
from hv_common.devices import DTYPES, parse_dtype
from hv_common.errors import UserError
from hv_common.labels import FINAL_LABEL, label_for, lora_file_name, state_folder_name, step_label
from lora_files.io import load_network, save_network
from training.flow import FlowSettings, flow_loss, loss_weights, noisy_input, seeded_draws
from training.nonfinite import NonFiniteGuard, NonFiniteStop, gradient_norm
from training.precision import resolve_mixed_precision
from training.processes import average_gradients, broadcast_parameters, prepare_processes, process_state
from training.resume.fit import run_record
from training.resume.pick import choose_state
from training.saving import Progress, load_state, prune, save_state

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything built at start-up that the loop and the savers share."""

    args: object
    accelerator: object
    model: torch.nn.Module
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: object
    flow: FlowSettings
    max_steps: int
    output_dir: Path
    dataset_summary: list[dict]
    base_id: str
    dtype: torch.dtype
    losses: list[float] = field(default_factory=list)
    sampler: object | None = None
    vae: object | None = None
    last_sample_step: int = -1
    validator: object | None = None
    validations: list[dict] = field(default_factory=list)
    guard: NonFiniteGuard | None = None  # the NaN/Inf guard (train() sets it; None: off)
    report: object | None = None  # run_report/page.py's RunReport (main process only)


def _require(args, *names: str) -> None:
    for name in names:
        if not getattr(args, name, None):
            raise UserError(f"--{name} is required for training")


def _flow_settings(args) -> FlowSettings:
    return FlowSettings(
        timestep_sampling=args.timestep_sampling, discrete_flow_shift=args.discrete_flow_shift,
        sigmoid_scale=args.sigmoid_scale, weighting_scheme=args.weighting_scheme, logit_mean=args.logit_mean,
        logit_std=args.logit_std, mode_scale=args.mode_scale, min_timestep=args.min_timestep or 0.0,
        max_timestep=args.max_timestep or 1000.0,
    )  # fmt: skip


def _load_batches(args):
    from dataset.config import load_dataset_config
    from dataset.train_dataset import CachedBatches, CachedDatasetSpec

    blueprint = load_dataset_config(args.dataset_config, check_media=False)
    specs = [CachedDatasetSpec.of(d) for d in blueprint.datasets]
    procs = process_state(args.ddp_timeout)  # data parallel: each process trains its share of every batch
    batches = CachedBatches(
        specs, seed=args.seed or 0, num_processes=procs.num_processes, process_index=procs.process_index
    )
    summary = [
        {"cache_directory": str(s.cache_directory), "batch_size": s.batch_size, "num_repeats": s.num_repeats}
        for s in specs
    ]
    return batches, summary


def _check_trackers(args) -> None:
    """accelerate silently drops a tracker whose package is missing: say so instead."""
    import importlib.util

    wanted = (
        {"tensorboard", "wandb"} if args.log_with == "all" else {args.log_with} if args.log_with else set()
    )
    for name in sorted(wanted):
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"--log_with {args.log_with}: the {name} package is not installed (pip install {name})"
            )
    if wanted and not args.logging_dir and "tensorboard" in wanted:
        raise UserError("--log_with tensorboard needs --logging_dir (where the event files go)")


def _max_steps(args, batches_per_epoch: int) -> int:
    updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if args.max_train_epochs:
        return args.max_train_epochs * updates_per_epoch
    return args.max_train_steps


def _check_attention(args, device: torch.device, dtype: torch.dtype) -> str:
    """The attention backend the flags choose, checked (package, CUDA, dtype, trainable) before the DiT loads."""
    from hunyuan_model.attention import AttentionBackendError, check_attention_backend
    from training.args import attention_backend

    backend = attention_backend(args)
    mixed = DTYPES.get(args.mixed_precision or "no")
    try:
        check_attention_backend(backend, device, dtype=mixed or dtype, training=True)
    except AttentionBackendError as e:
        raise UserError(str(e)) from None
    if backend != "sdpa":
        logger.info("attention: %s", backend)
    return backend


def _swap_and_compile(args, model, device: torch.device) -> None:
    """--blocks_to_swap, then --compile: after the LoRA is applied (the compiled blocks trace through it)."""
    apply_block_swap(model, args.blocks_to_swap or 0, device)
    if args.compile:
        if args.compile_cache_size_limit:
            torch._dynamo.config.cache_size_limit = args.compile_cache_size_limit
        dynamic = {"true": True, "false": False}.get(args.compile_dynamic or "auto")
        try:
            model.compile_blocks(args.compile_backend, args.compile_mode, dynamic, args.compile_fullgraph)
        except torch._dynamo.exc.InvalidBackend:
            known = ", ".join(torch._dynamo.list_backends())
            raise UserError(f"--compile_backend {args.compile_backend}: unknown; known: {known}") from None
        logger.info("compiling each DiT block (backend %s, mode %s): the first steps are slow",
                    args.compile_backend, args.compile_mode)  # fmt: skip


def build_run(args) -> Run:
    from accelerate import Accelerator

    from dataset.cache_files import file_identity
    from hunyuan_model.attention import set_attention_backend
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.config import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES
    from hv_common.input_checks import check_output_dir
    from networks.build import load_network_module
    from training.list_targets import check_patterns_early
    from training.optim import build_optimizer, build_scheduler, steps_from

    _require(args, "dit", "dataset_config", "output_dir")
    if not Path(args.dit).exists():
        raise UserError(f"--dit {args.dit}: no such file or folder")
    check_output_dir(args.output_dir)
    check_patterns_early(args)  # from the file's headers: a bad pattern fails before the weights load
    _check_trackers(args)
    flow = _flow_settings(args)
    batches, summary = _load_batches(args)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,  # None: accelerate's setting, as in musubi-tuner
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if not args.log_with else args.log_with,
        project_dir=args.logging_dir,
    )
    args = resolve_mixed_precision(args, accelerator)
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
    dtype = parse_dtype(
        args.dit_dtype, default=torch.bfloat16 if accelerator.device.type == "cuda" else torch.float32
    )
    backend = _check_attention(args, accelerator.device, dtype)
    if accelerator.device.type == "cuda" and accelerator.is_main_process:
        from training.estimate_memory import log_estimate

        log_estimate(args)  # from shapes, before the weights load: what fits is known before 25 GB are read
    swap = bool(args.blocks_to_swap) and accelerator.device.type != "cpu"
    # swapped blocks stay in CPU memory: load there, enable_block_swap moves the rest (13 B may not fit first)
    model = load_dit(args.dit, dtype=dtype, device="cpu" if swap else accelerator.device, fp8_base=args.fp8_base,
                     fp8_scaled=args.fp8_scaled, work_device=accelerator.device)  # fmt: skip
    set_attention_backend(model, backend)
    model.requires_grad_(False)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing(cpu_offload=args.gradient_checkpointing_cpu_offload)

    module = load_network_module(args.network_module)
    network = module.create_network(
        1.0, args.network_dim, args.network_alpha, model,
        target_block_classes=TARGET_BLOCK_CLASSES, default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        neuron_dropout=args.network_dropout, network_args=list(args.network_args), device=accelerator.device,
    )  # fmt: skip
    if args.network_weights:
        load_network(network, args.network_weights)
    network.apply_to(model)
    network.train()
    _swap_and_compile(args, model, accelerator.device)

    optimizer = build_optimizer(args.optimizer_type or "AdamW", network.prepare_optimizer_params(args.learning_rate),
                                args.learning_rate, args.optimizer_args or ())  # fmt: skip
    max_steps = _max_steps(args, len(batches))
    # One scheduler step per optimizer step (training_step calls it): a scheduler prepared by accelerate
    # would step once per process, and a schedule stretched to match is off by one step per process.
    scheduler = build_scheduler(
        optimizer, args.lr_scheduler, steps_from(args.lr_warmup_steps, max_steps), max_steps,
        args.lr_scheduler_num_cycles, args.lr_scheduler_power, args.lr_scheduler_min_lr_ratio or 0.0,
        steps_from(args.lr_decay_steps, max_steps), args.lr_scheduler_timescale,
    )  # fmt: skip
    # The network is not prepared: the DiT calls the LoRA modules itself, so a DDP wrapper would never see a
    # forward (it averaged nothing: _average_gradients does) and would only cost its gradient buckets, a
    # second copy of every LoRA gradient on the GPU. The network was created on the device already.
    optimizer = accelerator.prepare(optimizer)
    broadcast_parameters(accelerator, network)
    return Run(args, accelerator, model, network, optimizer, scheduler, batches, flow, max_steps,
               Path(args.output_dir), summary, file_identity(args.dit), dtype)  # fmt: skip


def training_step(run: Run, batch: dict) -> float:
    """One micro-batch: noise, flow-matching target, forward, backward; the optimizer steps on sync.

    Returns the loss, on a sync step averaged over the processes (the global batch's mean)."""
    args, device = run.args, run.accelerator.device
    if run.guard is not None:  # a skipped step names the cache files behind it
        run.guard.note_files(batch.get("cache_paths"))
    # Noise and t come from each item's own seed, on the CPU: the same item gets the same draws on any device,
    # in any process, whatever the batch around it.
    noise, t = seeded_draws(run.flow, batch["latents"], batch["noise_seed"])
    latents = batch["latents"].to(device)
    x_t, target = noisy_input(latents, noise.to(device), t.to(device))
    bsz = latents.shape[0]
    guidance = torch.full((bsz,), float(args.guidance_scale) * 1000.0, device=device)
    with run.accelerator.accumulate(run.network), run.accelerator.autocast():
        pred = run.model(
            x_t.to(run.dtype), (t * 1000.0).to(device), batch["llm"].to(device, run.dtype),
            batch["llm_mask"].to(device), batch["clip_pooled"].to(device, run.dtype), guidance.to(run.dtype),
        )  # fmt: skip
        loss = flow_loss(pred, target, loss_weights(run.flow, t), batch.get("loss_scale"))
        run.accelerator.backward(loss)
        if not run.accelerator.sync_gradients:
            value = float(loss.detach())
            if run.guard is not None:
                run.guard.note_loss(value)
            return value
        return _optimizer_step(run, loss.detach())


def _optimizer_step(run: Run, loss: torch.Tensor) -> float:
    """Clip, agree across processes on the loss and on skipping, step (or skip), advance the schedule."""
    acc, guard = run.accelerator, run.guard
    params = [p for p in run.network.parameters() if p.grad is not None]
    average_gradients(run.accelerator, params)
    norm = None
    if run.args.max_grad_norm:
        # What accelerate's clip_grad_norm_ does without FSDP/DeepSpeed (unsupported here), less its DTensor check,
        # which imports torch.distributed.tensor (seconds at start-up) to find no DTensor gradient.
        acc.unscale_gradients()
        norm = torch.nn.utils.clip_grad_norm_(params, run.args.max_grad_norm)
    elif guard is not None:
        norm = gradient_norm(params)
    bad = 0.0
    if guard is not None:
        local_bad = guard.take_loss_flag() or not bool(torch.isfinite(loss))
        bad = float(local_bad or (norm is not None and not bool(torch.isfinite(norm))))
    # One all-reduce: the logged loss is the global batch's, and every process takes the same decision
    # (a process that skipped alone would diverge from the others).
    stats = acc.reduce(torch.stack([loss.float(), torch.tensor(bad, device=loss.device)]), reduction="mean")
    value, skip = float(stats[0]), bool(stats[1] > 0)
    if not skip or acc.scaler is not None:  # fp16: the GradScaler itself skips non-finite gradients
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if guard is not None:
        guard.record(skip)
    return value


# ---------------------------------------------------------------- saving


def _metadata(run: Run, progress: Progress) -> dict[str, str]:
    from training.metadata import minimal_metadata, training_metadata

    net = run.network
    if run.args.no_metadata:
        return minimal_metadata(net)
    return training_metadata(run.args, net, run.dataset_summary, progress.step, progress.epoch, run.base_id)


def save_lora(run: Run, progress: Progress, name: str) -> Path:
    path = run.output_dir / name
    if run.accelerator.is_main_process:
        dtype = (
            parse_dtype(run.args.save_precision, default=torch.float32) if run.args.save_precision else None
        )
        save_network(run.network, str(path), dtype=dtype, metadata=_metadata(run, progress))
        logger.info("saved %s", path)
    return path


def _state_dir(run: Run, progress: Progress, kind: str) -> Path:
    count = progress.step if kind == "step" else progress.epoch
    return run.output_dir / state_folder_name(run.args.output_name, kind, count)


def save_training_state(run: Run, progress: Progress, kind: str) -> None:
    if run.accelerator.is_main_process:
        folder = _state_dir(run, progress, kind)
        extra = {"losses": run.losses, "validations": run.validations}
        save_state(folder, run.network, run.optimizer, run.scheduler, progress, extra, run_record(run))
        logger.info("saved state %s", folder)
        keep = run.args.save_last_n_steps_state if kind == "step" else run.args.save_last_n_epochs_state
        prune(run.output_dir, run.args.output_name, kind, keep, state=True)


def _every(n: int | None, count: int) -> bool:
    return bool(n) and count % n == 0


def _on_boundary(run: Run, progress: Progress, kind: str) -> None:
    """After an optimizer step (kind "step") or an epoch ("epoch"): save, validate, sample on schedule."""
    a = run.args
    plural = f"{kind}s"
    count = progress.step if kind == "step" else progress.epoch
    saving = _every(getattr(a, f"save_every_n_{plural}"), count) and progress.step < run.max_steps
    if saving:
        name = lora_file_name(a.output_name, **{kind: count})
        save_lora(run, progress, name)
        if run.accelerator.is_main_process:
            prune(run.output_dir, a.output_name, kind, getattr(a, f"save_last_n_{plural}"))
        if a.save_state:
            save_training_state(run, progress, kind)
    if run.validator is not None and _every(getattr(a, f"validate_every_n_{plural}"), count):
        _validate(run, progress)
    sampling = run.sampler is not None and _every(getattr(a, f"sample_every_n_{plural}"), count)
    if sampling:
        _sample(run, label_for(kind, count), progress.step)
    if run.report is not None and (saving or sampling):
        run.report.write(progress.step, "running")


def _validate(run: Run, progress: Progress) -> None:
    if run.validations and run.validations[-1]["step"] == progress.step:
        return
    logs = run.validator.evaluate(run.model, run.network, run.accelerator.device, run.dtype,
                                  float(run.args.guidance_scale))  # fmt: skip
    run.validations.append({"step": progress.step, **logs})
    logger.info("step %d: validation loss %.5f", progress.step, logs["loss/validation"])
    if run.args.log_with:
        run.accelerator.log(logs, step=progress.step)


def _sample(run: Run, label: str, step: int) -> None:
    run.last_sample_step = step
    if run.accelerator.is_main_process:
        written = run.sampler.sample(run.model, run.vae, label, run.output_dir, run.accelerator.device, run.dtype,
                                     network=run.network, progress=False)  # fmt: skip
        if run.args.log_with:
            from run_report.preview_media import log_preview_images

            log_preview_images(run.accelerator, written, step)


def _build_sampler(args, device: torch.device):
    """Prompts are encoded once, before the DiT loads, and the encoders freed; the VAE waits on the CPU."""
    from generation.previews import PreviewSampler
    from hunyuan_model.vae import load_vae

    _require(args, "vae", "text_encoder1", "text_encoder2")
    te_dtype = torch.float16 if device.type == "cuda" else torch.float32
    sampler = PreviewSampler.from_files(args.sample_prompts, args.text_encoder1, args.text_encoder2,
                                        output_name=args.output_name, device=device, dtype=te_dtype)  # fmt: skip
    vae_dtype = parse_dtype(args.vae_dtype, default=torch.float16 if device.type == "cuda" else torch.float32)
    return sampler, load_vae(args.vae, dtype=vae_dtype, device="cpu")


# ---------------------------------------------------------------- the loop


def _resume(run: Run) -> Progress:
    state = choose_state(run)  # checked whole and against this run's options before any of it loads
    if state is None:
        return Progress()
    folder = state.folder
    progress, extra = load_state(state.payload, state.lora, run.network, run.optimizer, run.scheduler)
    run.losses = list(extra.get("losses", []))
    run.validations = list(extra.get("validations", []))
    logger.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        folder,
        progress.step,
        progress.epoch,
        progress.batch_in_epoch,
    )
    return progress


def _loader_workers(run: Run) -> int:
    """musubi-tuner caps workers at the CPU count. When the step itself runs on the CPU, workers also take the
    cores torch computes on (bench/train_tiny.py: 2 workers on 2 cores cost a quarter of the step rate), so
    there they get only the cores torch's threads leave free; loading a cached batch takes well under 1 ms."""
    requested = run.args.max_data_loader_n_workers or 0
    cores = os.cpu_count() or 1
    workers = min(requested, cores)
    if run.accelerator.device.type == "cpu":
        workers = min(workers, max(0, cores - torch.get_num_threads()))
    if workers < requested:
        logger.info("data loader: %d workers instead of %d (%d cores, training on %s)", workers, requested, cores,
                    run.accelerator.device.type)  # fmt: skip
    return workers


def _loader(run: Run, progress: Progress) -> DataLoader:
    """One loader for the whole run: its sampler spans epochs, so workers start once (not once per epoch)."""
    from dataset.train_dataset import EpochSpanningSampler

    workers = _loader_workers(run)
    return DataLoader(
        run.batches,
        batch_size=None,
        sampler=EpochSpanningSampler(len(run.batches), progress.epoch, progress.batch_in_epoch),
        num_workers=workers,
        # Its own generator: creating an iterator would otherwise draw from the global RNG, and a resumed
        # run creates its iterator at another point than an uninterrupted one.
        generator=torch.Generator(),
    )


def _postfix(run: Run, loss: float) -> dict:
    recent = run.losses[-100:]
    out = {"loss": f"{loss:.4f}", "avg": f"{sum(recent) / len(recent):.4f}"}
    for group in run.optimizer.param_groups:
        out[f"lr/{group.get('kind', 'lora')}"] = f"{group['lr']:.2e}"
    return out


def train(args) -> int:
    from tqdm import tqdm

    from training.args import unimplemented_option_notes

    start = time.perf_counter()
    args = prepare_processes(args)
    for note in unimplemented_option_notes(args):
        logger.warning(note)
    run = build_run(args)
    if args.max_nonfinite_steps:
        run.guard = NonFiniteGuard(args.max_nonfinite_steps)
    progress = _resume(run)
    from training.validation import build_validator

    run.validator = build_validator(args, run.flow)
    if args.sample_prompts:
        run.sampler, run.vae = _build_sampler(args, run.accelerator.device)
    # Only now that every input has been read: a bad one (a prompt file, ...) leaves nothing on disk.
    run.output_dir.mkdir(parents=True, exist_ok=True)
    from run_report.page import start_report

    run.report = start_report(run)
    if args.log_with:
        run.accelerator.init_trackers(args.log_tracker_name or "hv_lora")
    if run.sampler is not None and args.sample_at_first and progress.step == 0:
        _sample(run, step_label(0), 0)
    logger.info(
        "training: %d steps, %d batches per epoch, %d process(es), start-up %.1f s", run.max_steps,
        len(run.batches), run.accelerator.num_processes, time.perf_counter() - start,
    )  # fmt: skip
    bar = tqdm(
        total=run.max_steps, initial=progress.step, desc="steps", disable=not run.accelerator.is_main_process
    )
    if progress.batch_in_epoch >= len(run.batches):  # resumed from a state saved at an epoch's last step
        _end_epoch(run, progress)
    if progress.step < run.max_steps:
        for batch in _loader(run, progress):  # endless: epochs follow each other until max_steps
            loss = training_step(run, batch)
            progress.batch_in_epoch += 1
            if run.accelerator.sync_gradients:
                _end_step(run, progress, loss, bar, start)
                if progress.step >= run.max_steps:
                    break
            if progress.batch_in_epoch >= len(run.batches):
                _end_epoch(run, progress)
    bar.close()
    _finish(run, progress)
    return 0


def _end_step(run: Run, progress: Progress, loss: float, bar, start: float) -> None:
    progress.step += 1
    if run.guard is not None and run.guard.skipped:
        _skipped_step(run, progress, bar)
        return
    run.losses.append(loss)
    if run.report is not None:
        run.report.step_done(progress.step)
    if len(run.losses) == 1:
        logger.info("first optimizer step done (%.2f s after start-up began)", time.perf_counter() - start)
    bar.update(1)
    bar.set_postfix(_postfix(run, loss), refresh=False)
    if run.args.log_with:
        logs = {"loss/current": loss}
        logs.update({f"lr/{g.get('kind', 'lora')}": g["lr"] for g in run.optimizer.param_groups})
        run.accelerator.log(logs, step=progress.step)
    _on_boundary(run, progress, "step")


def _skipped_step(run: Run, progress: Progress, bar) -> None:
    """A step without an update still counts; too many in a row stop the run with the last good weights."""
    guard = run.guard
    with bar.external_write_mode():  # the warning gets a line of its own, not the end of the bar's
        logger.warning("step %d: non-finite loss or gradients, optimizer step skipped (%d in a row, stop at %d)%s",
                       progress.step, guard.streak, guard.limit, guard.files_note())  # fmt: skip
    bar.update(1)
    if not guard.exhausted:
        _on_boundary(run, progress, "step")
        return
    a = run.args
    path = save_lora(run, progress, lora_file_name(a.output_name, step=progress.step))
    saved = str(path)
    if a.save_state or a.save_state_on_train_end:
        save_training_state(run, progress, "step")
        saved += f" and state {_state_dir(run, progress, 'step')} (--resume auto continues from it)"
    if run.report is not None:
        run.report.write(progress.step, "stopped (non-finite loss or gradients)")
    run.accelerator.wait_for_everyone()  # no process may exit while the main one is still writing
    run.accelerator.end_training()
    bar.close()
    first = progress.step - guard.streak + 1
    raise NonFiniteStop(
        f"steps {first}-{progress.step}: {guard.streak} optimizer steps in a row had a non-finite loss or "
        f"gradients, training stopped; the last good weights are saved in {saved}; try a lower "
        "--learning_rate, check the data, or raise --max_nonfinite_steps"
    )


def _end_epoch(run: Run, progress: Progress) -> None:
    progress.epoch += 1
    progress.batch_in_epoch = 0
    _on_boundary(run, progress, "epoch")


def _finish(run: Run, progress: Progress) -> None:
    a = run.args
    if run.validator is not None:
        _validate(run, progress)
    save_lora(run, progress, lora_file_name(a.output_name))
    if a.save_state or a.save_state_on_train_end:
        save_training_state(run, progress, "step")
    sampling = a.sample_every_n_steps or a.sample_every_n_epochs
    if run.sampler is not None and sampling and run.last_sample_step != progress.step:
        _sample(run, FINAL_LABEL, progress.step)
    if run.report is not None:
        run.report.write(progress.step, "finished")
    run.accelerator.wait_for_everyone()  # no process may exit while the main one is still writing
    run.accelerator.end_training()
