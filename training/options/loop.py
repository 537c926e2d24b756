"""What the loop trains on and how: the data, the length of the run, the optimizer and its schedule, and the
flow-matching timesteps and loss."""

from __future__ import annotations

from dataclasses import dataclass

from hv_common.errors import UserError
from hv_common.input_checks import seed as seed_type
from hv_common.option_types import (
    first_timestep,
    last_timestep,
    non_negative_float,
    non_negative_int,
    number,
    positive_float,
    positive_int,
    ratio,
    steps_or_ratio,
)
from hv_common.options import option

TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift", "logsnr")
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "cosmap", "sigma_sqrt")
# transformers' get_scheduler names, implemented in training/optim.py (no diffusers import at start-up).
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "polynomial",
    "inverse_sqrt",
    "warmup_stable_decay",
)


@dataclass(frozen=True)
class DataOptions:
    """data"""

    dataset_config: str | None = option(None, "dataset TOML (see docs/dataset.md)")
    max_data_loader_n_workers: int = option(8, "DataLoader workers", type=non_negative_int)
    persistent_data_loader_workers: bool = option(
        False, "accepted for musubi-tuner command lines: the loader's workers always live for the whole run"
    )


@dataclass(frozen=True)
class TrainingOptions:
    """training"""

    max_train_steps: int = option(1600, "optimizer steps", type=positive_int)
    max_train_epochs: int | None = option(None, "epochs (overrides --max_train_steps)", type=positive_int)
    gradient_accumulation_steps: int = option(1, "batches per step", type=positive_int)
    mixed_precision: str | None = option(  # None: accelerate's setting (training/precision.py)
        None,
        "autocast dtype (unset: accelerate's, from `accelerate launch --mixed_precision` or `accelerate config`)",
        choices=("no", "fp16", "bf16"),
    )
    full_bf16: bool = option(False, "bf16 LoRA weights and gradients (not implemented yet)")
    full_fp16: bool = option(False, "fp16 LoRA weights and gradients (not implemented yet)")
    seed: int | None = option(None, "random seed, 0 to 2**64 - 1 (unset: a random one)", type=seed_type)
    ddp_timeout: int | None = option(None, "DDP timeout in minutes (unset: accelerate's)", type=positive_int)
    max_nonfinite_steps: int = option(
        5,
        "a NaN/Inf loss or gradient skips the step; stop after N such steps in a row (0: no check)",
        type=non_negative_int,
    )

    def __post_init__(self) -> None:
        if self.full_bf16 and self.full_fp16:
            raise UserError("--full_bf16 and --full_fp16 exclude each other; choose one")


@dataclass(frozen=True)
class OptimizerOptions:
    """optimizer"""

    optimizer_type: str = option("AdamW", "AdamW, AdamW8bit, Adafactor, or any module.Class")
    optimizer_args: tuple[str, ...] = option(
        (), 'e.g. weight_decay=0.01 "betas=0.9,0.99"', metavar="KEY=VALUE"
    )
    learning_rate: float = option(2.0e-6, "learning rate", type=positive_float)
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0 turns it off", type=non_negative_float)
    lr_scheduler: str = option(
        "constant", "schedule", choices=LR_SCHEDULERS, section="learning-rate schedule"
    )
    lr_warmup_steps: int | float = option(
        0,
        "warmup steps, or a ratio (<1, or N%%) of all",
        type=steps_or_ratio,
        section="learning-rate schedule",
    )
    lr_decay_steps: int | float = option(
        0,
        "decay steps, or a ratio (<1, or N%%) of all",
        type=steps_or_ratio,
        section="learning-rate schedule",
    )
    lr_scheduler_num_cycles: int = option(
        1, "cosine_with_restarts cycles", type=positive_int, section="learning-rate schedule"
    )
    lr_scheduler_power: float = option(1.0, "polynomial power", type=number, section="learning-rate schedule")
    lr_scheduler_min_lr_ratio: float | None = option(
        None, "minimum lr as a ratio of the lr", type=ratio, section="learning-rate schedule"
    )
    lr_scheduler_timescale: int | None = option(
        None, "inverse_sqrt timescale (default: warmup)", type=positive_int, section="learning-rate schedule"
    )
    lr_scheduler_type: str | None = option(
        None,
        "a custom scheduler class, module.Class (overrides --lr_scheduler)",
        section="learning-rate schedule",
    )
    lr_scheduler_args: tuple[str, ...] = option(
        (), "arguments of that class", metavar="KEY=VALUE", section="learning-rate schedule"
    )

    def __post_init__(self) -> None:
        if self.lr_scheduler_args and not self.lr_scheduler_type:
            # musubi-tuner reads them only for a custom class: here they would silently do nothing
            raise UserError(
                "--lr_scheduler_args are the arguments of --lr_scheduler_type's class; give that class too "
                "(e.g. --lr_scheduler_type torch.optim.lr_scheduler.StepLR --lr_scheduler_args step_size=100)"
            )


@dataclass(frozen=True)
class FlowOptions:
    """timesteps and loss"""

    timestep_sampling: str = option("sigma", "how t is drawn", choices=TIMESTEP_SAMPLINGS)
    discrete_flow_shift: float = option(1.0, "flow shift (shift sampling)", type=positive_float)
    sigmoid_scale: float = option(1.0, "scale of sigmoid/shift sampling", type=positive_float)
    weighting_scheme: str = option("none", "loss weighting", choices=WEIGHTING_SCHEMES)
    logit_mean: float = option(0.0, "mean of logit_normal", type=number)
    logit_std: float = option(1.0, "std of logit_normal", type=positive_float)
    mode_scale: float = option(1.29, "scale of the mode scheme", type=number)
    min_timestep: int | None = option(None, "lowest timestep trained (0-999; unset: 0)", type=first_timestep)
    max_timestep: int | None = option(
        None, "highest timestep trained (1-1000; unset: 1000)", type=last_timestep
    )
    preserve_distribution_shape: bool = option(False, "min/max timestep by rejection, not rescaling")
    guidance_scale: float = option(1.0, "embedded guidance the DiT is given", type=number)

    def __post_init__(self) -> None:
        low, high = self.min_timestep, self.max_timestep
        if low is not None and high is not None and low >= high:
            raise UserError(f"--min_timestep {low} must be below --max_timestep {high}")
