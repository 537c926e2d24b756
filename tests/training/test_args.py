"""hv_train_network.py's options: every one parses with its default and with a value; bad values are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hv_common.errors import UserError
from hv_common.options import option_defaults, option_values
from training.args import (
    LR_SCHEDULERS,
    build_parser,
    parse_args,
    steps_or_ratio,
)
from training.config_file import option_actions
from training.options import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
FIELDS = option_defaults(TrainConfig)

# option -> (its command-line values, the value they give); every option of the parser is here
GIVEN = {
    "dit": (["w.safetensors"], "w.safetensors"),
    "dit_dtype": (["BF16"], "bf16"),
    "vae": (["vae.pt"], "vae.pt"),
    "vae_dtype": (["float16"], "float16"),
    "text_encoder1": (["llm"], "llm"),
    "text_encoder2": (["clip"], "clip"),
    "text_encoder_dtype": (["bf16"], "bf16"),
    "fp8_llm": ([], True),
    "vae_chunk_size": (["32"], 32),
    "vae_tiling": ([], True),
    "vae_spatial_tile_sample_min_size": (["128"], 128),
    "dit_in_channels": (["32"], 32),
    "fp8_base": ([], True),
    "fp8_scaled": ([], True),
    "blocks_to_swap": (["20"], 20),
    "use_pinned_memory_for_block_swap": ([], True),
    "block_swap_h2d_only": ([], True),
    "block_swap_ring_size": None,  # only 2, its default, is accepted: tests/training/test_block_swap_options.py
    "img_in_txt_in_offloading": ([], True),
    "disable_numpy_memmap": ([], True),
    "sdpa": ([], True),
    "flash_attn": ([], True),
    "sage_attn": ([], True),
    "xformers": ([], True),
    "flash3": ([], True),
    "dynamo_backend": (["INDUCTOR"], "INDUCTOR"),
    "dynamo_mode": (["max-autotune"], "max-autotune"),
    "dynamo_fullgraph": ([], True),
    "dynamo_dynamic": ([], True),
    "split_attn": ([], True),
    "dataset_config": (["d.toml"], "d.toml"),
    "max_data_loader_n_workers": (["0"], 0),
    "persistent_data_loader_workers": ([], True),
    "debug_dataset": ([], True),
    "network_module": (["my.lora"], "my.lora"),
    "network_dim": (["32"], 32),
    "network_alpha": (["16"], 16.0),
    "network_dropout": (["0.1"], 0.1),
    "network_args": (["loraplus_lr_ratio=4", "verbose=True"], ("loraplus_lr_ratio=4", "verbose=True")),
    "network_weights": (["init.safetensors"], "init.safetensors"),
    "dim_from_weights": ([], True),  # needs --network_weights: see extra_argv
    "optimizer_type": (["AdamW8bit"], "AdamW8bit"),
    "optimizer_args": (["weight_decay=0.01", "betas=0.9,0.99"], ("weight_decay=0.01", "betas=0.9,0.99")),
    "learning_rate": (["1e-4"], 1e-4),
    "max_grad_norm": (["0"], 0.0),
    "lr_scheduler": (["cosine_with_restarts"], "cosine_with_restarts"),
    "lr_warmup_steps": (["100"], 100),
    "lr_decay_steps": (["0.25"], 0.25),
    "lr_scheduler_num_cycles": (["3"], 3),
    "lr_scheduler_power": (["2"], 2.0),
    "lr_scheduler_min_lr_ratio": (["0.1"], 0.1),
    "lr_scheduler_timescale": (["50"], 50),
    "lr_scheduler_type": (["torch.optim.lr_scheduler.StepLR"], "torch.optim.lr_scheduler.StepLR"),
    "lr_scheduler_args": (["step_size=10"], ("step_size=10",)),
    "max_train_steps": (["200"], 200),
    "max_train_epochs": (["16"], 16),
    "gradient_accumulation_steps": (["4"], 4),
    "gradient_checkpointing": ([], True),
    "gradient_checkpointing_cpu_offload": ([], True),  # needs --gradient_checkpointing: see EXTRA_ARGV
    "compile": ([], True),
    "compile_backend": (["eager"], "eager"),
    "compile_mode": (["max-autotune-no-cudagraphs"], "max-autotune-no-cudagraphs"),
    "compile_dynamic": (["TRUE"], "true"),
    "compile_fullgraph": ([], True),
    "compile_cache_size_limit": (["32"], 32),
    "max_nonfinite_steps": (["3"], 3),
    "estimate_memory": ([], True),
    "vram_budget_gb": (["24"], 24.0),
    "estimate_resolution": (["960", "544", "33"], (960, 544, 33)),
    "mixed_precision": (["bf16"], "bf16"),
    "full_bf16": ([], True),
    "full_fp16": ([], True),
    "seed": (["42"], 42),
    "ddp_timeout": (["30"], 30),
    "ddp_gradient_as_bucket_view": ([], True),
    "ddp_static_graph": ([], True),
    "cuda_allow_tf32": ([], True),
    "cuda_cudnn_benchmark": ([], True),
    "timestep_sampling": (["shift"], "shift"),
    "discrete_flow_shift": (["7.0"], 7.0),
    "sigmoid_scale": (["1.5"], 1.5),
    "weighting_scheme": (["logit_normal"], "logit_normal"),
    "logit_mean": (["-0.5"], -0.5),
    "logit_std": (["2"], 2.0),
    "mode_scale": (["1.0"], 1.0),
    "min_timestep": (["0"], 0),
    "max_timestep": (["1000"], 1000),
    "preserve_distribution_shape": ([], True),
    "guidance_scale": (["6"], 6.0),
    "num_timestep_buckets": (["4"], 4),
    "show_timesteps": (["console"], "console"),
    "scale_weight_norms": (["1.0"], 1.0),
    "base_weights": (["a.safetensors", "b.safetensors"], ("a.safetensors", "b.safetensors")),
    "base_weights_multiplier": (["0.5"], (0.5,)),  # needs --base_weights: see EXTRA_ARGV
    "output_dir": (["out"], "out"),
    "output_name": (["my_lora"], "my_lora"),
    "save_every_n_steps": (["100"], 100),
    "save_every_n_epochs": (["1"], 1),
    "save_last_n_steps": (["300"], 300),
    "save_last_n_epochs": (["2"], 2),
    "save_last_n_steps_state": (["300"], 300),
    "save_last_n_epochs_state": (["2"], 2),
    "save_state": ([], True),
    "save_state_on_train_end": ([], True),
    "resume": (["auto"], "auto"),
    "save_precision": (["fp16"], "fp16"),
    "save_comfyui_layout": ([], True),
    "no_metadata": ([], True),
    "training_comment": (["trigger: sks"], "trigger: sks"),
    "metadata_title": (["Title"], "Title"),
    "metadata_author": (["me"], "me"),
    "metadata_description": (["what it does"], "what it does"),
    "metadata_license": (["MIT"], "MIT"),
    "metadata_tags": (["style,anime"], "style,anime"),
    "metadata_reso": (["960,544"], "960,544"),
    "metadata_arch": (["hunyuan-video-i2v"], "hunyuan-video-i2v"),
    "logging_dir": (["logs"], "logs"),
    "log_with": (["wandb"], "wandb"),
    "log_prefix": (["run1-"], "run1-"),
    "log_tracker_name": (["hv"], "hv"),
    "log_tracker_config": (["trackers.toml"], "trackers.toml"),
    "wandb_run_name": (["run 1"], "run 1"),
    "wandb_api_key": (["0123abcd"], "0123abcd"),
    "log_config": ([], True),
    "sample_prompts": (["prompts.txt"], "prompts.txt"),
    "sample_every_n_steps": (["50"], 50),
    "sample_every_n_epochs": (["1"], 1),
    "sample_at_first": ([], True),
    "validate_every_n_steps": (["25"], 25),
    "validate_every_n_epochs": (["1"], 1),
    "config_file": None,  # tests/training/test_config_file.py
    # refused (no network access to model hubs): tests/training/test_hub_options.py
    **dict.fromkeys(
        (
            "huggingface_repo_id",
            "huggingface_repo_type",
            "huggingface_path_in_repo",
            "huggingface_token",
            "huggingface_repo_visibility",
            "save_state_to_huggingface",
            "resume_from_huggingface",
            "async_upload",
        )
    ),
    "list_lora_targets": (["json"], "json"),
}
EXTRA_ARGV = {
    "dim_from_weights": ["--network_weights", "init.safetensors"],
    "gradient_checkpointing_cpu_offload": ["--gradient_checkpointing"],
    "lr_scheduler_args": ["--lr_scheduler_type", "StepLR"],  # the arguments of that class
    "base_weights_multiplier": ["--base_weights", "a.safetensors"],
}


def parse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "usage:" not in err
    return err


def test_no_arguments_give_every_default():
    args = parse_args([])
    assert args == TrainConfig()
    assert (args.optimizer.learning_rate, args.training.max_train_steps, args.network.network_alpha) == (
        2.0e-6,
        1600,
        1.0,
    )
    assert (args.flow.timestep_sampling, args.flow.weighting_scheme, args.flow.mode_scale) == (
        "sigma",
        "none",
        1.29,
    )


def test_the_dataclass_defaults_are_the_parser_defaults():
    """TrainConfig() is used by code that builds a configuration without parsing: it must mean the same run."""
    for dest, action in option_actions(build_parser()).items():
        default = tuple(action.default) if isinstance(action.default, (list, tuple)) else action.default
        assert FIELDS[dest] == default, dest


def test_every_option_is_listed_here_and_is_a_field():
    dests = set(option_actions(build_parser()))
    assert dests == set(GIVEN)
    assert dests == set(FIELDS)


def test_option_names_are_the_field_names():
    """Config file keys are the option names: `--x_y` must be stored as `x_y`, never renamed."""
    for dest, action in option_actions(build_parser()).items():
        assert action.option_strings == [f"--{dest}"]


@pytest.mark.parametrize("dest", [d for d, given in GIVEN.items() if given is not None])
def test_each_option_parses_with_a_value(dest):
    values, expected = GIVEN[dest]
    args = option_values(parse_args([*EXTRA_ARGV.get(dest, []), f"--{dest}", *values]))
    assert args[dest] == expected
    assert type(args[dest]) is type(expected)
    changed = {f for f in FIELDS if args[f] != FIELDS[f]}
    assert changed == {dest, *(a.removeprefix("--") for a in EXTRA_ARGV.get(dest, [])[::2])}


def test_resume_takes_an_existing_directory(tmp_path, capsys):
    assert parse_args(["--resume", str(tmp_path)]).saving.resume == str(tmp_path)
    err = parse_error(capsys, "--resume", str(tmp_path / "missing"))
    assert "--resume" in err and "'auto'" in err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--network_dim", "0"], ["--network_dim", "an integer > 0"]),
        (["--learning_rate", "fast"], ["--learning_rate", "a number > 0", "'fast'"]),
        (["--learning_rate", "nan"], ["a number > 0"]),
        (["--network_dropout", "1"], ["a number in [0, 1)"]),
        (["--max_train_steps", "1.5"], ["--max_train_steps", "an integer > 0"]),
        (["--seed", "-1"], ["--seed", "an integer >= 0"]),
        (["--min_timestep", "1000"], ["an integer in [0, 999]"]),
        (["--max_timestep", "0"], ["an integer in [1, 1000]"]),
        (["--mixed_precision", "fp8"], ["--mixed_precision", "invalid choice", "fp8"]),
        (["--timestep_sampling", "logit"], ["--timestep_sampling", "invalid choice"]),
        (["--weighting_scheme", "uniform"], ["--weighting_scheme", "invalid choice"]),
        (["--log_with", "comet"], ["--log_with", "invalid choice"]),
        (["--lr_scheduler", "cosine_restarts"], ["--lr_scheduler", "invalid choice"]),
        (["--save_precision", "fp8"], ["--save_precision", "invalid choice"]),
        (["--dit_dtype", "fp8"], ["--dit_dtype", "bfloat16"]),
        (["--lr_warmup_steps", "1.5"], ["--lr_warmup_steps", "a ratio in [0, 1)"]),
        (["--lr_scheduler_min_lr_ratio", "2"], ["a number in [0, 1]"]),
        (["--max_grad_norm", "-1"], ["--max_grad_norm", "a number >= 0"]),
        (["--list_lora_targets", "yaml"], ["--list_lora_targets", "invalid choice"]),
    ],
)
def test_bad_values_are_one_line_errors(capsys, argv, fragments):
    err = parse_error(capsys, *argv)
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--learning", "1e-4"],
        ["--network_d", "8"],
        ["--save_every", "5"],
        ["--gradient_check"],
        ["--fp8"],
    ],
)
def test_abbreviations_are_refused(capsys, argv):
    assert "unrecognized arguments: " + argv[0] in parse_error(capsys, *argv)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("100", 100), ("0.1", 0.1), ("10%", 0.1), ("250.0", 250), ("1e3", 1000), ("0.5%", 0.005)],
)
def test_warmup_is_steps_or_a_ratio(text, expected):
    value = steps_or_ratio(text)
    assert value == pytest.approx(expected) and type(value) is type(expected)


@pytest.mark.parametrize("text", ["-1", "1.5", "150%", "inf", "ten", ""])
def test_warmup_refuses_what_is_neither(text, capsys):
    parse_error(capsys, "--lr_warmup_steps", text)


@pytest.mark.slow  # imports transformers and diffusers
def test_schedulers_offered_are_ones_the_libraries_have():
    from diffusers.optimization import SchedulerType as DiffusersSchedulerType
    from transformers.optimization import SchedulerType

    musubi_tuners_own = {"adafactor", "rex"}  # Adafactor's schedule, its RexLR (modules/lr_schedulers.py)
    known = {s.value for s in SchedulerType} | {s.value for s in DiffusersSchedulerType} | musubi_tuners_own
    assert set(LR_SCHEDULERS) <= known


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["--min_timestep", "500", "--max_timestep", "500"],
            "--min_timestep 500 must be below --max_timestep 500",
        ),
        (["--dim_from_weights"], "--dim_from_weights needs --network_weights"),
        (["--full_bf16", "--full_fp16"], "--full_bf16 and --full_fp16"),
    ],
)
def test_contradictions_are_user_errors(argv, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")) as error:
        parse_args(argv)
    assert "\n" not in str(error.value)


def test_parsing_imports_no_torch():
    """Options are read before anything heavy: a typo must fail in well under a second."""
    import subprocess
    import sys

    code = "import sys; from training.args import parse_args; parse_args([]); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


def test_docs_list_every_option():
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    missing = [dest for dest in option_actions(build_parser()) if f"`--{dest}`" not in text]
    assert missing == []
