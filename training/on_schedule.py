"""What a run does on schedule, after an optimizer step or an epoch: save the LoRA (and the state), measure the
validation loss, sample previews, rewrite the report; and the savers the end of a run uses too."""

from __future__ import annotations

import logging
from pathlib import Path

from hv_common.devices import parse_dtype
from hv_common.labels import label_for, lora_file_name, state_folder_name
from training.options import Schedule, Unit
from training.resume.fit import run_record
from training.run import Run
from training.saving import Progress, prune, save_lora_files, save_state

logger = logging.getLogger(__name__)


def _metadata(run: Run, progress: Progress) -> dict[str, str]:
    from training.metadata import training_metadata

    return training_metadata(
        run.config, run.network, run.dataset_summary, progress.step, progress.epoch, run.base_id
    )


def save_lora(run: Run, progress: Progress, name: str) -> Path:
    path = run.output_dir / name
    if run.accelerator.is_main_process:
        saving = run.config.saving
        dtype = parse_dtype(saving.save_dtype, default=None)
        for written in save_lora_files(
            run.network, path, dtype, _metadata(run, progress), saving.save_comfyui_layout
        ):
            logger.info("saved %s", written)
    return path


def state_dir(run: Run, progress: Progress, unit: Unit) -> Path:
    count = progress.step if unit == "step" else progress.epoch
    return run.output_dir / state_folder_name(output_name(run), unit, count)


def save_training_state(run: Run, progress: Progress, unit: Unit) -> None:
    if run.accelerator.is_main_process:
        folder = state_dir(run, progress, unit)
        extra = {"losses": run.losses, "validations": run.validations}
        save_state(folder, run.network, run.optimizer, run.scheduler, progress, extra, run_record(run))
        logger.info("saved state %s", folder)
        keep = run.config.schedule(unit).keep_states
        prune(run.output_dir, output_name(run), unit, keep, state=True)


def output_name(run: Run) -> str:
    return str(run.config.saving.output_name)  # unset: "None", the stem the files have always had then


def _every(n: int | None, count: int) -> bool:
    return n is not None and n > 0 and count % n == 0


def on_boundary(run: Run, progress: Progress, unit: Unit) -> None:
    """After an optimizer step (unit "step") or an epoch ("epoch"): save, validate, sample on schedule."""
    schedule: Schedule = run.config.schedule(unit)
    count = progress.step if unit == "step" else progress.epoch
    saving = _every(schedule.save_every, count) and progress.step < run.max_steps
    if saving:
        step, epoch = (count, None) if unit == "step" else (None, count)
        save_lora(run, progress, lora_file_name(output_name(run), step=step, epoch=epoch))
        if run.accelerator.is_main_process:
            prune(run.output_dir, output_name(run), unit, schedule.keep_loras)
        if run.config.saving.save_state:
            save_training_state(run, progress, unit)
    if run.validator is not None and _every(schedule.validate_every, count):
        validate(run, progress)
    sampling = run.sampler is not None and _every(schedule.sample_every, count)
    if sampling:
        sample(run, label_for(unit, count), progress.step)
    if run.report is not None and (saving or sampling):
        run.report.write(progress.step, "running")


def validate(run: Run, progress: Progress) -> None:
    if run.validator is None or (run.validations and run.validations[-1]["step"] == progress.step):
        return
    logs = run.validator.evaluate(
        run.model, run.network, run.accelerator.device, run.dtype, float(run.config.flow.guidance_scale)
    )
    run.validations.append({"step": progress.step, **logs})
    logger.info("step %d: validation loss %.5f", progress.step, logs["loss/validation"])
    if run.config.logging.trackers:
        run.accelerator.log(logs, step=progress.step)


def sample(run: Run, label: str, step: int) -> None:
    run.last_sample_step = step
    if run.accelerator.is_main_process and run.sampler is not None and run.vae is not None:
        written = run.sampler.sample(
            run.model,
            run.vae,
            label,
            run.output_dir,
            run.accelerator.device,
            run.dtype,
            network=run.network,
            progress=False,
        )
        if run.config.logging.trackers:
            from run_report.preview_media import log_preview_images

            log_preview_images(run.accelerator, written, step)
