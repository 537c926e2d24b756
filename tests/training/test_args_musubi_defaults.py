"""Every default of an option musubi-tuner's hv_train_network.py also has is its default, or docs/options.md
lists the difference with its reason ("Defaults that differ from musubi-tuner's")."""

from __future__ import annotations

import re
from pathlib import Path

from training.args import build_parser

ROOT = Path(__file__).resolve().parents[2]

# musubi-tuner's defaults (main, commit 30c658c) for the options we both have, printed once by
#     python tests/helpers/derive_musubi_defaults.py ../musubi-tuner/src/musubi_tuner
# (its parser's source, walked: an add_argument without default= is None, a store_true flag False).
# fmt: off
MUSUBI_DEFAULTS = {'blocks_to_swap': None, 'compile': False, 'compile_backend': 'inductor', 'compile_cache_size_limit': None, 'compile_dynamic': None, 'compile_fullgraph': False, 'compile_mode': 'default', 'config_file': None, 'dataset_config': None, 'ddp_timeout': None, 'dim_from_weights': False, 'discrete_flow_shift': 1.0, 'dit': None, 'dit_dtype': None, 'flash_attn': False, 'fp8_base': False, 'gradient_accumulation_steps': 1, 'gradient_checkpointing': False, 'gradient_checkpointing_cpu_offload': False, 'guidance_scale': 1.0, 'img_in_txt_in_offloading': False, 'learning_rate': 2e-06, 'log_prefix': None, 'log_tracker_name': None, 'log_with': None, 'logging_dir': None, 'logit_mean': 0.0, 'logit_std': 1.0, 'lr_decay_steps': 0, 'lr_scheduler': 'constant', 'lr_scheduler_args': None, 'lr_scheduler_min_lr_ratio': None, 'lr_scheduler_num_cycles': 1, 'lr_scheduler_power': 1, 'lr_scheduler_timescale': None, 'lr_scheduler_type': '', 'lr_warmup_steps': 0, 'max_data_loader_n_workers': 8, 'max_grad_norm': 1.0, 'max_timestep': None, 'max_train_epochs': None, 'max_train_steps': 1600, 'metadata_author': None, 'metadata_description': None, 'metadata_license': None, 'metadata_tags': None, 'metadata_title': None, 'min_timestep': None, 'mixed_precision': None, 'mode_scale': 1.29, 'network_alpha': 1, 'network_args': None, 'network_dim': None, 'network_dropout': None, 'network_module': None, 'network_weights': None, 'no_metadata': False, 'optimizer_args': None, 'optimizer_type': '', 'output_dir': None, 'output_name': None, 'persistent_data_loader_workers': False, 'preserve_distribution_shape': False, 'resume': None, 'sage_attn': False, 'sample_at_first': False, 'sample_every_n_epochs': None, 'sample_every_n_steps': None, 'sample_prompts': None, 'save_every_n_epochs': None, 'save_every_n_steps': None, 'save_last_n_epochs': None, 'save_last_n_epochs_state': None, 'save_last_n_steps': None, 'save_last_n_steps_state': None, 'save_precision': None, 'save_state': False, 'save_state_on_train_end': False, 'sdpa': False, 'seed': None, 'sigmoid_scale': 1.0, 'split_attn': False, 'text_encoder1': None, 'text_encoder2': None, 'timestep_sampling': 'sigma', 'training_comment': None, 'vae': None, 'vae_dtype': None, 'weighting_scheme': 'none', 'xformers': False}
# fmt: on


def _unset(value) -> bool:
    return value is None or value == "" or value == () or value == []


def _ours() -> dict:
    return {a.dest: a.default for a in build_parser()._actions if a.option_strings}


def _documented_differences() -> set[str]:
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    section = text.split("## Defaults that differ from musubi-tuner's", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `--(\w+)`", section, flags=re.MULTILINE))


def test_our_defaults_are_musubi_tuners_or_documented():
    ours = _ours()
    differ = {
        name
        for name, theirs in MUSUBI_DEFAULTS.items()
        if not (_unset(theirs) and _unset(ours[name])) and theirs != ours[name]
    }
    assert differ == _documented_differences()


def test_mixed_precision_is_unset_as_in_musubi_tuner():
    assert MUSUBI_DEFAULTS["mixed_precision"] is None and _ours()["mixed_precision"] is None
