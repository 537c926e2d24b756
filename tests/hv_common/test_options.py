"""hv_common/options.py: a dataclass field declared once is the flag, its help, its default and its type."""

from __future__ import annotations

import argparse
from dataclasses import FrozenInstanceError, dataclass

import pytest

from hv_common.cli import OneLineArgumentParser
from hv_common.option_types import positive_int
from hv_common.options import add_options, option, option_names, options_from


@dataclass(frozen=True)
class Example:
    """example group"""

    rank: int | None = option(None, "LoRA rank", type=positive_int)
    alpha: float = option(1.0, "LoRA alpha", type=float)
    verbose: bool = option(False, "say more")
    extra: tuple[str, ...] = option((), "key=value pairs", metavar="KEY=VALUE")
    mode: str = option("table", "output", choices=("table", "json"))
    not_a_flag: int = 0  # a plain field: not on the command line


def _parse(argv: list[str]) -> Example:
    parser = OneLineArgumentParser(prog="x", allow_abbrev=False)
    add_options(parser, Example)
    return options_from(Example, parser.parse_args(argv))


def test_defaults_come_from_the_field_once():
    assert _parse([]) == Example()


def test_each_field_kind_parses_as_its_flag():
    got = _parse(["--rank", "8", "--alpha", "0.5", "--verbose", "--extra", "a=1", "b=2", "--mode", "json"])
    assert got == Example(rank=8, alpha=0.5, verbose=True, extra=("a=1", "b=2"), mode="json")
    assert isinstance(got.extra, tuple)  # lists become tuples: the result stays hashable


def test_bad_values_are_one_line_errors_with_exit_2(capsys):
    for argv in (["--rank", "0"], ["--mode", "xml"], ["--not_a_flag", "1"]):
        with pytest.raises(SystemExit) as e:
            _parse(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err


def test_help_groups_by_the_class_docstring_and_carries_the_help_text():
    parser = argparse.ArgumentParser(prog="x")
    add_options(parser, Example)
    text = parser.format_help()
    assert "example group:" in text and "LoRA rank" in text and "--not_a_flag" not in text


def test_the_result_is_frozen_and_lists_its_flags():
    got = _parse([])
    with pytest.raises(FrozenInstanceError):
        got.rank = 3  # type: ignore[misc]
    assert option_names(Example) == ["rank", "alpha", "verbose", "extra", "mode"]


def test_a_list_option_given_twice_adds_up():
    # argparse keeps only the last occurrence: `--network_args loraplus_lr_ratio=4 --network_args ...` then
    # trained without LoRA+, silently.
    assert _parse(["--extra", "a=1", "--extra", "b=2", "c=3"]).extra == ("a=1", "b=2", "c=3")


def test_a_list_option_on_the_command_line_replaces_its_default():
    parser = OneLineArgumentParser(prog="x", allow_abbrev=False)
    add_options(parser, Example)
    parser.set_defaults(extra=["from=file"])  # what --config_file does: its values become the defaults
    assert options_from(Example, parser.parse_args([])).extra == ("from=file",)
    got = options_from(Example, parser.parse_args(["--extra", "a=1", "--extra", "b=2"]))
    assert got.extra == ("a=1", "b=2")  # the command line wins, whole


@dataclass(frozen=True)
class WithRefused:
    """example group"""

    upload_to: str | None = option(None, refused="there is no network on a training rig of this project")
    upload_async: bool = option(False, refused="there is no network")


def test_a_refused_option_is_known_but_stops_with_its_reason():
    from hv_common.errors import UserError
    from hv_common.options import config_from_values, refused_reason

    parser = OneLineArgumentParser(prog="x", allow_abbrev=False)
    add_options(parser, WithRefused)
    assert options_from(WithRefused, parser.parse_args([])) == WithRefused()  # not given: nothing happens
    assert "not supported here" in parser.format_help()
    with pytest.raises(UserError, match=r"^--upload_to is not supported here: there is no network on"):
        options_from(WithRefused, parser.parse_args(["--upload_to", "me/repo"]))
    with pytest.raises(UserError, match=r"^--upload_async is not supported here"):
        options_from(WithRefused, parser.parse_args(["--upload_async"]))

    @dataclass(frozen=True)
    class Config:
        outputs: WithRefused

    with pytest.raises(UserError, match="upload_to"):  # a config file's value too
        config_from_values(Config, {"upload_to": "me/repo"})
    assert refused_reason(WithRefused, "upload_async") == "there is no network"
    assert refused_reason(Example, "rank") is None
