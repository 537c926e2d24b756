"""The trackers' start: packages checked before anything loads, --log_tracker_config's and --wandb_run_name's
keyword arguments, --log_config's options (no secrets, no paths), wandb's login with --wandb_api_key (the run
itself, with TensorBoard: tests/e2e/test_musubi_run_options.py)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from types import SimpleNamespace

import pytest

import hv_train_network
from hv_common.errors import UserError
from training.options import LoggingOptions, TrainConfig
from training.trackers import check_trackers, init_kwargs, logged_config, login_wandb

needs_no_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is not None, reason="wandb is installed here"
)


@needs_no_wandb
@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("extra", [[], ["--wandb_api_key", "k"], ["--wandb_run_name", "r"]])
def test_wandb_without_its_package_is_one_line_naming_it(extra, tmp_path, capsys):
    # a real command line: it stops before the DiT loads (none exists here)
    tmp_path.joinpath("dit.safetensors").write_bytes(b"")
    code = hv_train_network.main(
        [
            "--dit",
            str(tmp_path / "dit.safetensors"),
            "--dataset_config",
            "d.toml",
            "--output_dir",
            str(tmp_path / "out"),
            "--log_with",
            "wandb",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "error: --log_with wandb: the wandb package is not installed (pip install wandb)"
    )
    assert not (tmp_path / "out").exists()


def test_wandb_options_without_wandb_are_said_to_be_unused(caplog):
    with caplog.at_level(logging.WARNING):
        check_trackers(LoggingOptions(wandb_run_name="r", wandb_api_key="k", log_config=True))
    assert [r.getMessage().split()[0] for r in caplog.records] == [
        "--wandb_run_name",
        "--wandb_api_key",
        "--log_config",
    ]


def test_tracker_config_gives_each_tracker_its_arguments(tmp_path):
    path = tmp_path / "trackers.toml"
    path.write_text('[wandb]\nname = "from file"\ntags = ["a"]\n[tensorboard]\nflush_secs = 5\n')
    options = LoggingOptions(log_with="all", logging_dir="logs", log_tracker_config=str(path))
    assert init_kwargs(options) == {
        "wandb": {"name": "from file", "tags": ["a"]},
        "tensorboard": {"flush_secs": 5},
    }
    # --wandb_run_name: wandb's name, over the file's (musubi-tuner dropped it when a file was given)
    named = LoggingOptions(log_with="wandb", log_tracker_config=str(path), wandb_run_name="cli")
    assert init_kwargs(named)["wandb"] == {"name": "cli", "tags": ["a"]}
    assert init_kwargs(LoggingOptions(log_with="wandb", wandb_run_name="cli")) == {"wandb": {"name": "cli"}}
    assert init_kwargs(LoggingOptions(logging_dir="logs")) == {}


def test_a_table_for_a_tracker_not_in_use_is_said_to_be_unused(tmp_path, caplog):
    path = tmp_path / "trackers.toml"
    path.write_text("[wandb]\nentity = 'me'\n")
    with caplog.at_level(logging.WARNING):
        check_trackers(LoggingOptions(logging_dir="logs", log_tracker_config=str(path)))
    assert "[wandb] is not used: this run logs to tensorboard" in caplog.text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (None, "cannot read it"),
        ("[wandb\n", "not a TOML file"),
        ("name = 'x'\n", "name must be a table of one tracker's arguments"),
    ],
)
def test_a_bad_tracker_config_is_one_line(tmp_path, text, fragment):
    path = tmp_path / "trackers.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=fragment) as info:
        check_trackers(LoggingOptions(logging_dir="logs", log_tracker_config=str(path)))
    assert str(info.value).startswith(f"--log_tracker_config {path}: ") and "\n" not in str(info.value)


def test_log_config_gives_the_options_without_secrets_or_paths():
    assert logged_config(TrainConfig.of(logging_dir="logs")) is None  # not asked for
    values = logged_config(
        TrainConfig.of(
            log_config=True,
            logging_dir="logs",
            dit="/home/me/dit.safetensors",
            output_dir="/home/me/out",
            wandb_api_key="secret",
            network_dim=16,
            network_args=("loraplus_lr_ratio=4",),
        )
    )
    assert values is not None
    assert values["network_dim"] == 16 and values["network_args"] == "['loraplus_lr_ratio=4']"
    assert values["log_config"] is True and values["learning_rate"] == 2e-6
    for left_out in ("dit", "output_dir", "logging_dir", "wandb_api_key", "huggingface_token", "vae"):
        assert left_out not in values
    assert all(v is None or isinstance(v, (bool, str, int, float)) for v in values.values())


def test_wandb_logs_in_with_the_key_and_writes_under_the_runs_log_folder(tmp_path, monkeypatch):
    logins: list[str] = []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(login=lambda key: logins.append(key)))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    login_wandb(LoggingOptions(log_with="wandb", wandb_api_key="k123"), tmp_path / "logs" / "run")
    assert logins == ["k123"]
    assert (tmp_path / "logs" / "run").is_dir()
    assert os.environ["WANDB_DIR"] == str(tmp_path / "logs" / "run")
    login_wandb(LoggingOptions(log_with="wandb"), None)  # no key: no login
    assert logins == ["k123"]
