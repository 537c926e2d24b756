"""musubi-tuner's Hugging Face Hub options are known by name and refused: this trainer has no network access to
model hubs. Each stops with one line and exit 2, from the command line and from a config file alike."""

from __future__ import annotations

import pytest

import hv_train_network
from training.args import build_parser
from training.options.outputs import NO_HUB

# option -> what a musubi-tuner command line gives it ([] for a flag)
HUB_OPTIONS = {
    "huggingface_repo_id": ["me/my-lora"],
    "huggingface_repo_type": ["model"],
    "huggingface_path_in_repo": ["loras"],
    "huggingface_token": ["hf_xxx"],
    "huggingface_repo_visibility": ["public"],
    "save_state_to_huggingface": [],
    "resume_from_huggingface": [],
    "async_upload": [],
}


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    code = hv_train_network.main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    return line


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("name", list(HUB_OPTIONS))
def test_each_hub_option_stops_with_one_line(name, capsys):
    line = _one_line_exit_2(capsys, ["--list_lora_targets", f"--{name}", *HUB_OPTIONS[name]])
    assert line == f"error: --{name} is not supported here: {NO_HUB}"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("name", list(HUB_OPTIONS))
def test_each_hub_option_stops_from_a_config_file_too(name, tmp_path, capsys):
    value = '"x"' if HUB_OPTIONS[name] else "true"
    path = tmp_path / "c.toml"
    path.write_text(f"[huggingface]\n{name} = {value}\n")
    line = _one_line_exit_2(capsys, ["--list_lora_targets", "--config_file", str(path)])
    assert line == f"error: --{name} is not supported here: {NO_HUB}"


def test_hub_options_are_shown_in_help_as_refused():
    text = " ".join(build_parser().format_help().split())
    for name in HUB_OPTIONS:
        assert f"--{name}" in text
    assert text.count(f"not supported here: {' '.join(NO_HUB.split())}") == len(HUB_OPTIONS)
