"""What the loop trains on and how: the data, the length of the run, the optimizer and its schedule, and the
flow-matching timesteps and loss."""

from __future__ import annotations

from dataclasses import dataclass

from hv_common.errors import UserError
from hv_common.input_checks import seed as seed_type
from hv_common.option_types import (
    first_timestep,
    integer,
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
    "piecewise_constant",  # diffusers' (step_rules in --lr_scheduler_args)
    "rex",  # musubi-tuner's RexLR
    "adafactor",  # Adafactor's own relative step size (--optimizer_type Adafactor, relative_step=True)
)
# The built-in schedules that take --lr_scheduler_args, as musubi-tuner passes them: their keywords.
SCHEDULER_ARGS = {"piecewise_constant": ("step_rules",), "rex": ("rex_alpha", "rex_beta")}
SHOW_TIMESTEPS = ("image", "console")


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
    full_bf16: bool = option(
        False, "LoRA weights, gradients and optimizer state in bf16 (needs mixed precision bf16)"
    )
    full_fp16: bool = option(
        False, "LoRA weights, gradients and optimizer state in fp16 (needs mixed precision fp16)"
    )
    seed: int | None = option(None, "random seed, 0 to 2**64 - 1 (unset: a random one)", type=seed_type)
    ddp_timeout: int | None = option(None, "DDP timeout in minutes (unset: accelerate's)", type=positive_int)
    max_nonfinite_steps: int = option(
        5,
        "a NaN/Inf loss or gradient skips the step; stop after N such steps in a row (0: no check)",
        type=non_negative_int,
    )
    scale_weight_norms: float | None = option(
        None,
        "after each optimizer step, scale down each LoRA module whose up @ down norm exceeds this (max-norm; "
        "1 is a good start; unset or 0: off)",
        type=non_negative_float,
        section="LoRA network",
    )
    base_weights: tuple[str, ...] = option(
        (), "LoRA files merged into the DiT before training", metavar="PATH", section="LoRA network"
    )
    base_weights_multiplier: tuple[float, ...] = option(
        (),
        "their multipliers, in the same order (a missing one: 1.0)",
        type=number,
        metavar="X",
        section="LoRA network",
    )

    def __post_init__(self) -> None:
        if self.full_bf16 and self.full_fp16:
            raise UserError("--full_bf16 and --full_fp16 exclude each other; choose one")
        # Unset: accelerate's setting, checked when training/precision.py resolves it (this runs again then).
        given = self.mixed_precision
        for on, flag, wanted in (
            (self.full_bf16, "full_bf16", "bf16"),
            (self.full_fp16, "full_fp16", "fp16"),
        ):
            if on and given not in (None, wanted):
                where = " on a CUDA GPU: a CPU has no fp16 autocast" if wanted == "fp16" else ""
                raise UserError(
                    f"--{flag} needs mixed precision {wanted} (--mixed_precision {wanted}{where}); "
                    f"this run's is {given}"
                )
        if len(self.base_weights_multiplier) > len(self.base_weights):
            # musubi-tuner ignores the extra ones: here a multiplier never silently does nothing
            raise UserError(
                f"--base_weights_multiplier has {len(self.base_weights_multiplier)} values for "
                f"{len(self.base_weights)} --base_weights file(s): give one per file (a missing one is 1.0)"
            )


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
        if self.lr_scheduler_type:
            return
        takes = SCHEDULER_ARGS.get(self.lr_scheduler)
        if self.lr_scheduler_args and takes is None:
            # musubi-tuner passes them to the other schedules, which take none: here they would do nothing
            raise UserError(
                f"--lr_scheduler_args: --lr_scheduler {self.lr_scheduler} takes none (piecewise_constant and rex "
                "do, and a custom --lr_scheduler_type class, e.g. torch.optim.lr_scheduler.StepLR with "
                "step_size=100)"
            )
        given = scheduler_arg_names(self.lr_scheduler_args)
        unknown = sorted(set(given) - set(takes or ()))
        if unknown:
            raise UserError(
                f"--lr_scheduler_args {', '.join(unknown)}: --lr_scheduler {self.lr_scheduler} takes "
                f"{', '.join(takes or ())}"
            )
        if self.lr_scheduler == "piecewise_constant":
            if "step_rules" not in given:
                raise UserError(
                    '--lr_scheduler piecewise_constant needs --lr_scheduler_args step_rules="1:10,0.1:20,0.01" '
                    "(x1 before step 10, x0.1 before step 20, then x0.01)"
                )
            parse_step_rules(given["step_rules"])


def scheduler_arg_names(items: tuple[str, ...]) -> dict[str, str]:
    """{key: value text} of KEY=VALUE items (the values are read by training/optim.py)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--lr_scheduler_args {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def parse_step_rules(text: str) -> tuple[list[tuple[int, float]], float]:
    """piecewise_constant's rules as diffusers reads them: "1:10,0.1:20,0.01" is x1 for steps < 10, x0.1 for
    steps < 20, x0.01 after; ([(10, 1.0), (20, 0.1)], 0.01), sorted by step."""
    rules = text.strip().strip("\"'").split(",")
    try:
        pairs = []
        for rule in rules[:-1]:
            factor, step = rule.split(":")
            pairs.append((int(step), float(factor)))
        last = float(rules[-1])
    except ValueError:
        raise UserError(
            f'--lr_scheduler_args step_rules={text}: expected "factor:step,...,factor", e.g. "1:10,0.1:20,0.01"'
        ) from None
    return sorted(dict(pairs).items()), last


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
    num_timestep_buckets: int | None = option(
        None,
        "stratified t: each run of N draws takes one from each of N equal slices of [0, 1) (2 or more; "
        "no effect with --timestep_sampling sigma, as in musubi-tuner: a warning says so)",
        type=integer,
    )
    show_timesteps: str | None = option(
        None,
        "draw 100,000 timesteps as training would, show their histogram and the loss weighting, then stop "
        "(image: a PNG in --output_dir or the current folder)",
        choices=SHOW_TIMESTEPS,
    )

    def __post_init__(self) -> None:
        low, high = self.min_timestep, self.max_timestep
        if low is not None and high is not None and low >= high:
            raise UserError(f"--min_timestep {low} must be below --max_timestep {high}")
