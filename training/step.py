"""One micro-batch's forward and backward, and the optimizer step that ends each --gradient_accumulation_steps
of them (clip, agree across processes, step or skip a non-finite one, advance the schedule).

Accumulation is the loop's own (training/trainer.py): the Accelerator is built with one micro-batch per step,
so that its optimizer steps whenever optimizer_step says so."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hunyuan_model.sampler import I2V_IN_CHANNELS, i2v_input
from hv_common.errors import UserError
from networks.max_norm import MaxNormFigures
from training.flow import flow_loss, loss_weights, noisy_input, seeded_draws, timestep_strata
from training.nonfinite import gradient_norm
from training.processes import average_gradients
from training.run import Run


@dataclass(frozen=True)
class StepOutcome:
    loss: float  # the last micro-batch's loss, averaged over the processes (the global batch's mean)
    skipped: bool  # non-finite loss or gradients: the weights were left alone
    max_norm: MaxNormFigures | None = None  # --scale_weight_norms: what it did after this step

    def tracker_logs(self) -> dict[str, float]:
        """The step's figures besides loss and lr, under musubi-tuner's tracker names."""
        if self.max_norm is None:
            return {}
        return {
            "max_norm/keys_scaled": self.max_norm.keys_scaled,
            "max_norm/average_key_norm": self.max_norm.average_key_norm,
            "max_norm/max_key_norm": self.max_norm.max_key_norm,
        }

    def bar_figures(self) -> dict[str, str]:
        """What musubi-tuner adds to the progress bar: the modules scaled and the mean norm."""
        if self.max_norm is None:
            return {}
        return {
            "keys_scaled": str(self.max_norm.keys_scaled),
            "avg_key_norm": f"{self.max_norm.average_key_norm:.3g}",
        }


def check_max_norm_support(network: object, cap: float | None) -> None:
    """--scale_weight_norms needs the network's apply_max_norm_regularization (LoRA's up/down pairs): checked
    at start-up, not at the first step. musubi-tuner warns and skips other networks; here that is an error."""
    if cap and not callable(getattr(network, "apply_max_norm_regularization", None)):
        raise UserError(
            f"--scale_weight_norms: the {type(network).__name__} of --network_module has no "
            "apply_max_norm_regularization (LoRA's networks.lora has)"
        )


def training_step(run: Run, batch: dict) -> StepOutcome:
    """One optimizer step on one batch: what a run with --gradient_accumulation_steps 1 does each step."""
    return optimizer_step(run, [micro_step(run, batch)])


def micro_step(run: Run, batch: dict, slot: tuple[int, int] | None = None) -> torch.Tensor:
    """One micro-batch: noise, flow-matching target, forward, backward. Its gradients add up with those of the
    step's other micro-batches (the loss is divided by their number, as accelerate's backward would).
    `slot`: (epoch, batch index) of the batch, for --num_timestep_buckets.
    Returns this process's loss of the micro-batch, detached."""
    device, dtype = run.accelerator.device, run.dtype
    # Noise and t come from each item's own seed, on the CPU: the same item gets the same draws on any device,
    # in any process, whatever the batch around it.
    noise, t = seeded_draws(run.flow, batch["latents"], batch["noise_seed"], _strata(run, batch, slot))
    latents = batch["latents"].to(device)
    x_t, target = noisy_input(latents, noise.to(device), t.to(device))
    guidance = torch.full((latents.shape[0],), float(run.config.flow.guidance_scale) * 1000.0, device=device)
    x_in = x_t.to(dtype)
    if run.config.model.dit_in_channels == I2V_IN_CHANNELS:  # checked against the DiT at start-up
        x_in = i2v_input(x_in, latents)
    with run.accelerator.autocast():
        pred = run.model(
            x_in,
            (t * 1000.0).to(device),
            batch["llm"].to(device, dtype),
            batch["llm_mask"].to(device),
            batch["clip_pooled"].to(device, dtype),
            guidance.to(dtype),
        )
        loss = flow_loss(pred, target, loss_weights(run.flow, t), batch.get("loss_scale"))
        run.accelerator.backward(loss / run.config.training.gradient_accumulation_steps)
    return loss.detach()


def _strata(run: Run, batch: dict, slot: tuple[int, int] | None) -> list[int] | None:
    """Each item's timestep bucket with --num_timestep_buckets (its position in the global batch: the
    process's share starts at process_index x its size, as dataset/train_dataset.py's share does)."""
    if not run.flow.strata or slot is None:
        return None
    n = batch["latents"].shape[0]
    first = run.accelerator.process_index * n
    epoch, index = slot
    seed = run.config.training.seed or 0
    return timestep_strata(run.flow.strata, seed, epoch, index, list(range(first, first + n)))


def optimizer_step(run: Run, micro_losses: list[torch.Tensor]) -> StepOutcome:
    """After the last micro-batch of a step: average the gradients over the processes, clip, agree on the loss
    and on skipping, step (or skip), advance the schedule. With the guard on, a non-finite loss of any
    micro-batch or a non-finite gradient norm skips the step on every process."""
    acc, guarding = run.accelerator, run.guard.enabled
    params = [p for p in run.network.parameters() if p.grad is not None]
    average_gradients(acc, params)
    norm = None
    max_norm = run.config.optimizer.max_grad_norm
    if max_norm:
        # What accelerate's clip_grad_norm_ does without FSDP/DeepSpeed (unsupported here), less its DTensor check,
        # which imports torch.distributed.tensor (seconds at start-up) to find no DTensor gradient.
        acc.unscale_gradients()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif guarding:
        norm = gradient_norm(params)
    bad = 0.0
    if guarding:
        finite_losses = all(bool(torch.isfinite(loss)) for loss in micro_losses)
        bad = float(not finite_losses or (norm is not None and not bool(torch.isfinite(norm))))
    loss = micro_losses[-1]
    # One all-reduce: the logged loss is the global batch's, and every process takes the same decision
    # (a process that skipped alone would diverge from the others).
    stats = acc.reduce(torch.stack([loss.float(), torch.tensor(bad, device=loss.device)]), reduction="mean")
    value, skip = float(stats[0]), bool(stats[1] > 0)
    if not skip or acc.scaler is not None:  # fp16: the GradScaler itself skips non-finite gradients
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    cap = run.config.training.scale_weight_norms
    # musubi-tuner: after every optimizer step (a skipped one too: the weights are already within the cap)
    figures = run.network.apply_max_norm_regularization(cap, acc.device) if cap else None
    return StepOutcome(value, skip, figures)
