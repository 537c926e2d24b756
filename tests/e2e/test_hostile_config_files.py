"""Hostile --config_file TOML files through hv_train_network.py: one `error:` line, exit code 2, nothing executed."""

from __future__ import annotations

import pytest
from hostile_files import refused as _refused

import hv_train_network

pytestmark = pytest.mark.usefixtures("restore_logging")


# ---------------------------------------------------------------- --config_file TOML

CONFIG_TOML: dict[str, tuple[str | bytes, str]] = {
    "syntax error": ("[optimizer\nlearning_rate = 1\n", "TOML syntax error"),
    "parser IndexError": ("T .", "TOML syntax error"),
    "deep array": ("a = " + "[" * 3000 + "]" * 3000, "TOML syntax error"),
    "unknown option": ("learnig_rate = 1e-4\n", "did you mean learning_rate?"),
    "10 MB key": ("x" * 10_000_000 + " = 1\n", "too large"),
    "long key": ("x" * 100_000 + " = 1\n", "characters)"),
    "wrong type": ('learning_rate = "abc"\n', "learning_rate: expected a number > 0"),
    "float for an int": ("max_train_steps = 1.5\n", "max_train_steps"),
    "bool for an int": ("max_train_steps = true\n", "max_train_steps"),
    "NaN": ("learning_rate = nan\n", "learning_rate"),
    "a list for a scalar": ("learning_rate = [1]\n", "expected a single value"),
    "network_args as a string": ('network_args = "verbose=True"\n', "expected a list"),
    "network_args injection": (
        "network_args = [\"verbose=__import__('os').system('touch {marker}')\"]\n",
        "not a Python literal",
    ),
    "nested sections": ("[a.b]\nc = 1\n", "sections nest one level only"),
    "huge seed": ("seed = 18446744073709551616\n", "seed: expected an integer >= 0 and <= 2**64 - 1"),
    "non-UTF-8": (b'output_dir = "\xff"\n', "cannot read the config file"),
}


@pytest.mark.parametrize("case", list(CONFIG_TOML), ids=list(CONFIG_TOML))
def test_config_toml_hostile(case, tmp_path, capsys):
    marker = tmp_path / "pwned"
    body, fragment = CONFIG_TOML[case]
    path = tmp_path / "config.toml"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body.replace("{marker}", str(marker)))
    code = hv_train_network.main(["--list_lora_targets", "json", "--config_file", str(path)])
    _refused(capsys, code, fragment)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("nope.toml", "no such file"), ("x" * 5000, "cannot use it"), ("a_dir", "no such file")],
    ids=["missing", "name too long", "a directory"],
)
def test_config_file_that_cannot_be_opened(name, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_dir").mkdir()
    _refused(capsys, hv_train_network.main(["--config_file", name]), "--config_file", fragment)
