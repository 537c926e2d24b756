"""Command-line options of hv_train_network.py: an argparse builder that grows by groups, and a typed result.

Option names, meanings and defaults follow musubi-tuner's hv_train_network.py, so its users' command lines
and config files run unchanged (docs/options.md lists them all). `TrainArgs(**vars(namespace))` fails
loudly if the parser and the dataclass ever disagree. `--config_file` is read by training/config_file.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from hv_common.cli import OneLineArgumentParser
from hv_common.input_checks import seed as seed_type
from hv_common.option_types import (  # noqa: F401 (re-exported for the config-file reader)
    DTYPE_NAMES,
    dtype_name,
    first_timestep,
    integer,
    last_timestep,
    non_negative_float,
    non_negative_int,
    number,
    positive_float,
    positive_int,
    probability,
    ratio,
    steps_or_ratio,
)

TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift", "logsnr")
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "cosmap", "sigma_sqrt")
# transformers' get_scheduler names, implemented in training/optim.py (no diffusers import at start-up).
LR_SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "cosine_with_min_lr",
    "polynomial", "inverse_sqrt", "warmup_stable_decay",
)  # fmt: skip
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainArgs:
    # model
    dit: str | None = None
    dit_dtype: str | None = None
    vae: str | None = None
    vae_dtype: str | None = None
    text_encoder1: str | None = None
    text_encoder2: str | None = None
    fp8_base: bool = False
    fp8_scaled: bool = False
    blocks_to_swap: int | None = None
    img_in_txt_in_offloading: bool = False
    # attention
    sdpa: bool = False
    flash_attn: bool = False
    sage_attn: bool = False
    xformers: bool = False
    split_attn: bool = False
    # data
    dataset_config: str | None = None
    max_data_loader_n_workers: int = 8
    persistent_data_loader_workers: bool = False
    debug_dataset: bool = False
    # LoRA network
    network_module: str = "networks.lora"
    network_dim: int | None = None
    network_alpha: float = 1.0
    network_dropout: float | None = None
    network_args: tuple[str, ...] = ()
    network_weights: str | None = None
    dim_from_weights: bool = False
    # optimizer
    optimizer_type: str = "AdamW"
    optimizer_args: tuple[str, ...] = ()
    learning_rate: float = 2.0e-6
    max_grad_norm: float = 1.0
    # learning-rate schedule
    lr_scheduler: str = "constant"
    lr_warmup_steps: int | float = 0
    lr_decay_steps: int | float = 0
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0
    lr_scheduler_min_lr_ratio: float | None = None
    lr_scheduler_timescale: int | None = None
    lr_scheduler_type: str | None = None
    lr_scheduler_args: tuple[str, ...] = ()
    # training
    max_train_steps: int = 1600
    max_train_epochs: int | None = None
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    gradient_checkpointing_cpu_offload: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str = "default"
    compile_dynamic: str | None = None
    compile_fullgraph: bool = False
    compile_cache_size_limit: int | None = None
    mixed_precision: str | None = None  # None: accelerate's setting (training/precision.py)
    full_bf16: bool = False
    full_fp16: bool = False
    seed: int | None = None
    ddp_timeout: int | None = None
    max_nonfinite_steps: int = 5
    # timesteps and loss
    timestep_sampling: str = "sigma"
    discrete_flow_shift: float = 1.0
    sigmoid_scale: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    min_timestep: int | None = None
    max_timestep: int | None = None
    preserve_distribution_shape: bool = False
    guidance_scale: float = 1.0
    # saving and resuming
    output_dir: str | None = None
    output_name: str | None = None
    save_every_n_steps: int | None = None
    save_every_n_epochs: int | None = None
    save_last_n_steps: int | None = None
    save_last_n_epochs: int | None = None
    save_last_n_steps_state: int | None = None
    save_last_n_epochs_state: int | None = None
    save_state: bool = False
    save_state_on_train_end: bool = False
    resume: str | None = None
    save_precision: str | None = None
    # metadata
    no_metadata: bool = False
    training_comment: str | None = None
    metadata_title: str | None = None
    metadata_author: str | None = None
    metadata_description: str | None = None
    metadata_license: str | None = None
    metadata_tags: str | None = None
    # logging
    logging_dir: str | None = None
    log_with: str | None = None
    log_prefix: str | None = None
    log_tracker_name: str | None = None
    # previews
    sample_prompts: str | None = None
    sample_every_n_steps: int | None = None
    sample_every_n_epochs: int | None = None
    sample_at_first: bool = False
    # validation
    validate_every_n_steps: int | None = None
    validate_every_n_epochs: int | None = None
    # general
    config_file: str | None = None
    list_lora_targets: str | None = None
    estimate_memory: bool = False
    vram_budget_gb: float | None = None
    estimate_resolution: tuple[int, ...] | None = None


def resume_target(text: str) -> str:
    """`auto` (the newest state under --output_dir) or a state directory that exists now, not hours later."""
    if text == "auto":
        return text
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is no directory; give a saved state directory or 'auto'")
    return text


# --- option groups ------------------------------------------------------------------------------------------


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--dit", help="DiT checkpoint (.safetensors, .pt, or a diffusers folder)")
    group.add_argument("--dit_dtype", type=dtype_name, help="DiT weight dtype (unset: bfloat16 on a GPU)")
    group.add_argument("--vae", help="VAE checkpoint, for sample previews")
    group.add_argument("--vae_dtype", type=dtype_name, help="VAE dtype (unset: float16 on a GPU)")
    group.add_argument("--text_encoder1", help="LLM text encoder (llava-llama-3), for sample prompts")
    group.add_argument("--text_encoder2", help="CLIP-L text encoder, for sample prompts")
    group.add_argument(
        "--fp8_base",
        action="store_true",
        help="store the DiT blocks' Linear weights in float8_e4m3fn (about half the memory of bf16), compute in "
        "--dit_dtype; modulation, norms, biases, embeddings and the final layer stay in --dit_dtype",
    )
    group.add_argument(
        "--fp8_scaled",
        action="store_true",
        help="like --fp8_base (implies it), with a float32 scale per output row: closer to the bf16 model",
    )
    group.add_argument(
        "--blocks_to_swap", type=non_negative_int,
        help="keep the last N of the DiT's blocks (double then single, 60 on the 720p model) in CPU memory and "
        "copy each to the GPU just before it runs: less GPU memory, more PCIe traffic; at most blocks - 2",
    )  # fmt: skip
    group.add_argument(
        "--img_in_txt_in_offloading",
        action="store_true",
        help="img_in/txt_in on the CPU (not implemented yet)",
    )


def add_attention_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attention")
    # At most one (check_combinations). The kernels are checked at start-up: a missing package, a CPU device
    # or a float32 DiT for flash/sage is an error, never a silent fall-back to SDPA.
    group.add_argument(
        "--sdpa", action="store_true", help="PyTorch scaled_dot_product_attention (the default; any device)"
    )
    for name, help_text in (
        ("flash_attn", "FlashAttention 2 on the valid tokens only (pip install flash-attn; CUDA, fp16/bf16)"),
        ("sage_attn", "SageAttention (pip install sageattention; CUDA): inference only, it has no backward "
                      "pass, so the trainer refuses it; use it in hv_generate_video.py (--attn_mode sageattn)"),
        ("xformers", "xformers memory_efficient_attention per sample on the valid tokens "
                     "(pip install xformers; CUDA)"),
        ("split_attn", "SDPA one sample at a time on its valid tokens, with no mask tensor, so that PyTorch "
                       "can use its flash kernel on CUDA: for long videos with batch size > 1 (any device; may "
                       "be given with --sdpa)"),
    ):  # fmt: skip
        group.add_argument(f"--{name}", action="store_true", help=help_text)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset_config", help="dataset TOML (see docs/dataset.md)")
    group.add_argument(
        "--max_data_loader_n_workers", type=non_negative_int, default=8, help="DataLoader workers"
    )
    group.add_argument(
        "--persistent_data_loader_workers",
        action="store_true",
        help="accepted for musubi-tuner command lines: the loader's workers always live for the whole run",
    )
    group.add_argument("--debug_dataset", action="store_true", help="show what the dataset yields, then stop")


def add_network_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA network")
    group.add_argument("--network_module", default="networks.lora", help="module with create_network()")
    group.add_argument("--network_dim", type=positive_int, help="LoRA rank (default 4)")
    group.add_argument(
        "--network_alpha", type=positive_float, default=1.0, help="LoRA alpha; scale = alpha/dim"
    )
    group.add_argument("--network_dropout", type=probability, help="dropout on the rank-r activations")
    group.add_argument(
        "--network_args",
        nargs="*",
        default=(),
        metavar="KEY=VALUE",
        help="e.g. loraplus_lr_ratio=4 \"exclude_patterns=[r'.*single_blocks.*']\" (see docs/network_args.md)",
    )
    group.add_argument("--network_weights", help="LoRA file to start from")
    group.add_argument("--dim_from_weights", action="store_true", help="take the rank from --network_weights")


def add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimizer")
    group.add_argument(
        "--optimizer_type", default="AdamW", help="AdamW, AdamW8bit, Adafactor, or any module.Class"
    )
    group.add_argument(
        "--optimizer_args",
        nargs="*",
        default=(),
        metavar="KEY=VALUE",
        help='e.g. weight_decay=0.01 "betas=0.9,0.99"',
    )
    group.add_argument("--learning_rate", type=positive_float, default=2.0e-6, help="learning rate")
    group.add_argument(
        "--max_grad_norm", type=non_negative_float, default=1.0, help="gradient clipping norm; 0 turns it off"
    )


def add_scheduler_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("learning-rate schedule")
    group.add_argument("--lr_scheduler", default="constant", choices=LR_SCHEDULERS, help="schedule")
    group.add_argument(
        "--lr_warmup_steps",
        type=steps_or_ratio,
        default=0,
        help="warmup steps, or a ratio (<1, or N%%) of all",
    )
    group.add_argument(
        "--lr_decay_steps", type=steps_or_ratio, default=0, help="decay steps, or a ratio (<1, or N%%) of all"
    )
    group.add_argument(
        "--lr_scheduler_num_cycles", type=positive_int, default=1, help="cosine_with_restarts cycles"
    )
    group.add_argument("--lr_scheduler_power", type=number, default=1.0, help="polynomial power")
    group.add_argument("--lr_scheduler_min_lr_ratio", type=ratio, help="minimum lr as a ratio of the lr")
    group.add_argument(
        "--lr_scheduler_timescale", type=positive_int, help="inverse_sqrt timescale (default: warmup)"
    )
    group.add_argument(
        "--lr_scheduler_type", help="a custom scheduler class, module.Class (overrides --lr_scheduler)"
    )
    group.add_argument(
        "--lr_scheduler_args", nargs="*", default=(), metavar="KEY=VALUE", help="arguments of that class"
    )


def add_training_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--max_train_steps", type=positive_int, default=1600, help="optimizer steps")
    group.add_argument("--max_train_epochs", type=positive_int, help="epochs (overrides --max_train_steps)")
    group.add_argument("--gradient_accumulation_steps", type=positive_int, default=1, help="batches per step")
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="recompute activations: less memory"
    )
    group.add_argument(
        "--gradient_checkpointing_cpu_offload", action="store_true",
        help="with --gradient_checkpointing: keep the saved block inputs in CPU memory (less GPU memory, slower)",
    )  # fmt: skip
    group.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each DiT block (first steps are slow: compiling)",
    )
    group.add_argument(
        "--compile_backend", default="inductor", help="torch.compile backend (default inductor)"
    )
    group.add_argument(
        "--compile_mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode (default default)",
    )
    group.add_argument(
        "--compile_dynamic", choices=("true", "false", "auto"), type=str.lower,
        help="dynamic shapes: true, false, or auto (unset: auto, torch decides)",
    )  # fmt: skip
    group.add_argument("--compile_fullgraph", action="store_true", help="torch.compile fullgraph=True")
    group.add_argument(
        "--compile_cache_size_limit", type=positive_int,
        help="torch._dynamo recompile limit per block kind (unset: torch's default, 8)",
    )  # fmt: skip
    group.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"),
        help="autocast dtype (unset: accelerate's, from `accelerate launch --mixed_precision` or `accelerate config`)",
    )  # fmt: skip
    group.add_argument(
        "--full_bf16", action="store_true", help="bf16 LoRA weights and gradients (not implemented yet)"
    )
    group.add_argument(
        "--full_fp16", action="store_true", help="fp16 LoRA weights and gradients (not implemented yet)"
    )
    group.add_argument("--seed", type=seed_type, help="random seed, 0 to 2**64 - 1 (unset: a random one)")
    group.add_argument(
        "--ddp_timeout", type=positive_int, help="DDP timeout in minutes (unset: accelerate's)"
    )
    group.add_argument(
        "--max_nonfinite_steps", type=non_negative_int, default=5,
        help="a NaN/Inf loss or gradient skips the step; stop after N such steps in a row (0: no check)",
    )  # fmt: skip


def add_timestep_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("timesteps and loss")
    group.add_argument(
        "--timestep_sampling", default="sigma", choices=TIMESTEP_SAMPLINGS, help="how t is drawn"
    )
    group.add_argument(
        "--discrete_flow_shift", type=positive_float, default=1.0, help="flow shift (shift sampling)"
    )
    group.add_argument(
        "--sigmoid_scale", type=positive_float, default=1.0, help="scale of sigmoid/shift sampling"
    )
    group.add_argument("--weighting_scheme", default="none", choices=WEIGHTING_SCHEMES, help="loss weighting")
    group.add_argument("--logit_mean", type=number, default=0.0, help="mean of logit_normal")
    group.add_argument("--logit_std", type=positive_float, default=1.0, help="std of logit_normal")
    group.add_argument("--mode_scale", type=number, default=1.29, help="scale of the mode scheme")
    group.add_argument(
        "--min_timestep", type=first_timestep, help="lowest timestep trained (0-999; unset: 0)"
    )
    group.add_argument(
        "--max_timestep", type=last_timestep, help="highest timestep trained (1-1000; unset: 1000)"
    )
    group.add_argument(
        "--preserve_distribution_shape",
        action="store_true",
        help="min/max timestep by rejection, not rescaling",
    )
    group.add_argument(
        "--guidance_scale", type=number, default=1.0, help="embedded guidance the DiT is given"
    )


def add_saving_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("saving and resuming")
    group.add_argument("--output_dir", help="where LoRA files and states go")
    group.add_argument("--output_name", help="file name stem of the LoRA files")
    for unit in ("steps", "epochs"):
        group.add_argument(f"--save_every_n_{unit}", type=positive_int, help=f"save a LoRA every N {unit}")
        group.add_argument(
            f"--save_last_n_{unit}", type=positive_int, help=f"keep the LoRAs of the last N {unit}"
        )
        group.add_argument(
            f"--save_last_n_{unit}_state", type=positive_int, help=f"keep the states of the last N {unit}"
        )
    group.add_argument("--save_state", action="store_true", help="save the full state with each LoRA")
    group.add_argument(
        "--save_state_on_train_end", action="store_true", help="save the full state at the end"
    )
    group.add_argument("--resume", type=resume_target, metavar="DIR|auto", help="continue from a saved state")
    group.add_argument(
        "--save_precision",
        choices=("float", "fp16", "bf16"),
        help="dtype of saved LoRA weights (unset: as trained)",
    )


def add_metadata_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metadata of the LoRA file")
    group.add_argument("--no_metadata", action="store_true", help="write no ss_* metadata")
    group.add_argument("--training_comment", help="stored as ss_training_comment")
    for field in ("title", "author", "description", "license"):
        group.add_argument(f"--metadata_{field}", help=f"modelspec {field}")
    group.add_argument("--metadata_tags", help="modelspec tags, comma-separated")


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("--logging_dir", help="TensorBoard log directory")
    group.add_argument(
        "--log_with",
        choices=("tensorboard", "wandb", "all"),
        help="trackers (unset: tensorboard with --logging_dir)",
    )
    group.add_argument("--log_prefix", help="prefix of each run's log directory")
    group.add_argument("--log_tracker_name", help="tracker (project) name")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sample previews")
    group.add_argument("--sample_prompts", help="prompt file (--w --h --f --d --s --g --fs per line)")
    group.add_argument("--sample_every_n_steps", type=positive_int, help="sample every N steps")
    group.add_argument("--sample_every_n_epochs", type=positive_int, help="sample every N epochs")
    group.add_argument("--sample_at_first", action="store_true", help="sample before the first step")


def add_validation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validation")
    group.add_argument("--validate_every_n_steps", type=positive_int, help="validation loss every N steps")
    group.add_argument("--validate_every_n_epochs", type=positive_int, help="validation loss every N epochs")


def add_general_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config_file", metavar="FILE.toml", help="read options from a TOML file; the command line wins"
    )
    parser.add_argument(
        "--list_lora_targets",
        nargs="?",
        const="table",
        choices=("table", "json"),
        help="print the modules the LoRA would wrap and its param groups, then stop (no weights are loaded)",
    )
    parser.add_argument(
        "--estimate_memory",
        action="store_true",
        help="print an estimate of the GPU memory of one training step, then stop (no weights are loaded)",
    )
    parser.add_argument(
        "--vram_budget_gb",
        type=positive_float,
        help="GPU memory in GiB (24 for a 24 GB card): report the smallest --blocks_to_swap that fits",
    )
    parser.add_argument(
        "--estimate_resolution",
        nargs="+",
        type=positive_int,
        metavar="W H FRAMES [BATCH]",
        help="estimate for this batch instead of the largest bucket of --dataset_config",
    )


ARG_GROUPS = (
    add_model_args, add_attention_args, add_data_args, add_network_args, add_optimizer_args, add_scheduler_args,
    add_training_args, add_timestep_args, add_saving_args, add_metadata_args, add_logging_args,
    add_sampling_args, add_validation_args, add_general_args,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="hv_train_network.py",
        description="Train a LoRA for HunyuanVideo.",
        allow_abbrev=False,  # `--network_d 8` must not silently mean --network_dim
    )
    for add in ARG_GROUPS:
        add(parser)
    return parser


# --- parsing ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """The command line, over `--config_file`'s values when one is given, as a TrainArgs.

    argparse errors exit 2 with one line; config file errors and contradictions raise UserError.
    """
    from training.config_file import read_config_file

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    namespace = parser.parse_args(argv)
    if namespace.config_file is not None:
        parser.set_defaults(**read_config_file(namespace.config_file, parser))
        namespace = parser.parse_args(argv)  # the file's values are now defaults: the command line wins
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(namespace).items()}
    args = TrainArgs(**values)
    check_combinations(args)
    return args


def check_combinations(args: TrainArgs) -> None:
    """What no single option can check: contradictions caught before a model is loaded."""
    from hv_common.errors import UserError

    if (
        args.min_timestep is not None
        and args.max_timestep is not None
        and args.min_timestep >= args.max_timestep
    ):
        raise UserError(
            f"--min_timestep {args.min_timestep} must be below --max_timestep {args.max_timestep}"
        )
    if args.dim_from_weights and args.network_weights is None:
        raise UserError("--dim_from_weights needs --network_weights (the LoRA file to read the rank from)")
    if args.full_bf16 and args.full_fp16:
        raise UserError("--full_bf16 and --full_fp16 exclude each other; choose one")
    if args.gradient_checkpointing_cpu_offload and not args.gradient_checkpointing:
        raise UserError("--gradient_checkpointing_cpu_offload needs --gradient_checkpointing")
    if args.compile and args.blocks_to_swap and args.compile_mode in ("reduce-overhead", "max-autotune"):
        # CUDA graphs bake in the weights' addresses; block swap gives them new ones every step
        raise UserError(
            f"--compile_mode {args.compile_mode} uses CUDA graphs, which block swap breaks: with --blocks_to_swap "
            "use --compile_mode default or max-autotune-no-cudagraphs"
        )
    if args.compile and args.blocks_to_swap and args.compile_backend == "cudagraphs":
        raise UserError(
            "--compile_backend cudagraphs and --blocks_to_swap exclude each other (weight addresses)"
        )
    if args.estimate_resolution is not None and len(args.estimate_resolution) not in (3, 4):
        raise UserError(
            f"--estimate_resolution {' '.join(map(str, args.estimate_resolution))}: give W H FRAMES [BATCH]"
        )
    attention_backend(args)  # two attention backends -> UserError


ATTENTION_BACKENDS = ("flash_attn", "sage_attn", "xformers", "split_attn")  # flags; none set: "sdpa"


def attention_backend(args: TrainArgs) -> str:
    """The attention backend the flags choose: "sdpa" unless one of ATTENTION_BACKENDS is set.

    `--sdpa --split_attn` is split_attn (it is SDPA, one sample at a time; musubi users write both); any other
    two flags are a UserError.
    """
    from hv_common.errors import UserError

    chosen = [name for name in ATTENTION_BACKENDS if getattr(args, name)]
    if args.sdpa and chosen and chosen[0] != "split_attn":
        chosen.insert(0, "sdpa")
    if len(chosen) > 1:
        flags = " and ".join(f"--{name}" for name in chosen)
        raise UserError(f"{flags} exclude each other: choose one attention backend")
    return chosen[0] if chosen else "sdpa"


# --- options accepted before they work ----------------------------------------------------------------------

UNIMPLEMENTED_OPTIONS = {
    "img_in_txt_in_offloading": "img_in and txt_in stay on the training device",
    "full_bf16": "LoRA weights and gradients stay float32 (--mixed_precision still applies)",
    "full_fp16": "LoRA weights and gradients stay float32 (--mixed_precision still applies)",
}


def unimplemented_option_notes(args: TrainArgs) -> list[str]:
    """One line per accepted-but-not-implemented option that is set, for the trainer to log at start:
    a GPU option never silently does nothing."""
    defaults = {f.name: f.default for f in fields(TrainArgs)}
    return [
        f"--{name} is accepted but not implemented yet, so it has no effect: {instead}"
        for name, instead in UNIMPLEMENTED_OPTIONS.items()
        if getattr(args, name) != defaults[name]
    ]
