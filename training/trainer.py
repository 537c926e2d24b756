"""The training loop, top to bottom: cached batches -> flow-matching loss on the DiT with a LoRA -> LoRA files
and states. Start-up is training/run.py, one micro-batch and the optimizer step training/step.py, what happens
on schedule training/on_schedule.py."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from hv_common.labels import FINAL_LABEL, lora_file_name, step_label
from training.nonfinite import NonFiniteStop
from training.on_schedule import on_boundary, output_name, sample, save_lora, save_training_state, state_dir
from training.on_schedule import validate as run_validation
from training.options import TrainConfig
from training.processes import ddp_flag_notes, prepare_processes
from training.resume.pick import choose_state
from training.run import Run, build_run, build_sampler
from training.saving import Progress, load_state
from training.step import StepOutcome, micro_step, optimizer_step
from training.trackers import start_trackers

if TYPE_CHECKING:
    from tqdm import tqdm

logger = logging.getLogger(__name__)


def train(config: TrainConfig) -> int:
    from tqdm import tqdm

    from run_report.page import start_report
    from training.validation import build_validator

    if config.flow.show_timesteps:  # musubi-tuner: show the distribution, then stop before anything loads
        from training.show_timesteps import show_timesteps

        return show_timesteps(config)
    start = time.perf_counter()
    config = prepare_processes(config)  # only the main process logs; every process has the same seed
    for note in ddp_flag_notes(config.backends):
        logger.warning(note)
    run = build_run(config)
    progress = _resume(run)
    run.validator = build_validator(config, run.flow)
    if config.sampling.sample_prompts:
        run.sampler, run.vae = build_sampler(config, run.accelerator.device)
    # Only now that every input has been read: a bad one (a prompt file, ...) leaves nothing on disk.
    run.output_dir.mkdir(parents=True, exist_ok=True)
    run.report = start_report(run)
    start_trackers(run)
    if run.sampler is not None and config.sampling.sample_at_first and progress.step == 0:
        sample(run, step_label(0), 0)
    logger.info(
        "training: %d steps, %d batches per epoch, %d process(es), start-up %.1f s",
        run.max_steps,
        len(run.batches),
        run.accelerator.num_processes,
        time.perf_counter() - start,
    )
    bar = tqdm(
        total=run.max_steps, initial=progress.step, desc="steps", disable=not run.accelerator.is_main_process
    )
    if progress.batch_in_epoch >= len(run.batches):  # resumed from a state saved at an epoch's last step
        _end_epoch(run, progress)
    accumulation = config.training.gradient_accumulation_steps
    # endless: epochs follow each other until max_steps (no loader, no workers, when the run is done already)
    batches: Iterator[dict] = iter(_loader(run, progress)) if progress.step < run.max_steps else iter(())
    while progress.step < run.max_steps:
        micro_losses: list[torch.Tensor] = []
        for micro in range(accumulation):  # the gradients of the step's micro-batches add up
            batch = next(batches)
            run.guard.note_files(batch.get("cache_paths"))  # a skipped step names the files behind it
            micro_losses.append(micro_step(run, batch, (progress.epoch, progress.batch_in_epoch)))
            progress.batch_in_epoch += 1
            if micro < accumulation - 1 and progress.batch_in_epoch >= len(run.batches):
                _end_epoch(run, progress)  # an epoch can end inside a step
        outcome = optimizer_step(run, micro_losses)
        progress.step += 1
        _after_step(run, progress, outcome, bar, start)
        if progress.step < run.max_steps and progress.batch_in_epoch >= len(run.batches):
            _end_epoch(run, progress)
    bar.close()
    _finish(run, progress)
    return 0


def _after_step(run: Run, progress: Progress, outcome: StepOutcome, bar: tqdm, start: float) -> None:
    """Log the step and run what is on schedule; the NaN/Inf guard's one place: a skipped step is logged, and
    too many in a row stop the run with the last good weights saved."""
    guard = run.guard
    guard.record(outcome.skipped)
    if outcome.skipped:
        with bar.external_write_mode():  # the warning gets a line of its own, not the end of the bar's
            logger.warning(
                "step %d: non-finite loss or gradients, optimizer step skipped (%d in a row, stop at %d)%s",
                progress.step,
                guard.streak,
                guard.limit,
                guard.files_note(),
            )
        bar.update(1)
        if guard.exhausted:
            _stop_nonfinite(run, progress, bar)
        on_boundary(run, progress, "step")
        return
    run.losses.append(outcome.loss)
    if run.report is not None:
        run.report.step_done(progress.step)
    if len(run.losses) == 1:
        logger.info("first optimizer step done (%.2f s after start-up began)", time.perf_counter() - start)
    bar.update(1)
    bar.set_postfix({**_postfix(run, outcome.loss), **outcome.bar_figures()}, refresh=False)
    if run.config.logging.trackers:
        logs = {"loss/current": outcome.loss, **outcome.tracker_logs()}
        logs.update({f"lr/{g.get('kind', 'lora')}": g["lr"] for g in run.optimizer.param_groups})
        run.accelerator.log(logs, step=progress.step)
    on_boundary(run, progress, "step")


def _stop_nonfinite(run: Run, progress: Progress, bar: tqdm) -> None:
    """A skipped step still counts; too many in a row stop the run with the last good weights."""
    guard = run.guard
    saved = str(save_lora(run, progress, lora_file_name(output_name(run), step=progress.step)))
    if run.config.saving.saves_final_state:
        save_training_state(run, progress, "step")
        saved += f" and state {state_dir(run, progress, 'step')} (--resume auto continues from it)"
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
    on_boundary(run, progress, "epoch")


def _finish(run: Run, progress: Progress) -> None:
    config = run.config
    if run.validator is not None:
        run_validation(run, progress)
    save_lora(run, progress, lora_file_name(output_name(run)))
    if config.saving.saves_final_state:
        save_training_state(run, progress, "step")
    sampling = config.sampling.sample_every_n_steps or config.sampling.sample_every_n_epochs
    if run.sampler is not None and sampling and run.last_sample_step != progress.step:
        sample(run, FINAL_LABEL, progress.step)
    if run.report is not None:
        run.report.write(progress.step, "finished")
    run.accelerator.wait_for_everyone()  # no process may exit while the main one is still writing
    run.accelerator.end_training()


# ---------------------------------------------------------------- helpers


def _resume(run: Run) -> Progress:
    state = choose_state(run)  # checked whole and against this run's options before any of it loads
    if state is None:
        return Progress()
    assert state.lora is not None  # check_state read it
    progress, extra = load_state(state.payload, state.lora, run.network, run.optimizer, run.scheduler)
    run.losses = list(extra.get("losses", []))
    run.validations = list(extra.get("validations", []))
    logger.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        state.folder,
        progress.step,
        progress.epoch,
        progress.batch_in_epoch,
    )
    return progress


def _loader_workers(run: Run) -> int:
    """musubi-tuner caps workers at the CPU count. When the step itself runs on the CPU, workers also take the
    cores torch computes on (bench/train_tiny.py: 2 workers on 2 cores cost a quarter of the step rate), so
    there they get only the cores torch's threads leave free; loading a cached batch takes well under 1 ms."""
    requested = run.config.data.max_data_loader_n_workers or 0
    cores = os.cpu_count() or 1
    workers = min(requested, cores)
    if run.accelerator.device.type == "cpu":
        workers = min(workers, max(0, cores - torch.get_num_threads()))
    if workers < requested:
        logger.info(
            "data loader: %d workers instead of %d (%d cores, training on %s)",
            workers,
            requested,
            cores,
            run.accelerator.device.type,
        )
    return workers


def _loader(run: Run, progress: Progress) -> DataLoader:
    """One loader for the whole run: its sampler spans epochs, so workers start once (not once per epoch)."""
    from dataset.train_dataset import EpochSpanningSampler

    return DataLoader(
        run.batches,
        batch_size=None,
        sampler=EpochSpanningSampler(len(run.batches), progress.epoch, progress.batch_in_epoch),
        num_workers=_loader_workers(run),
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
