"""`--config_file x.toml`: any option of hv_train_network.py from a TOML file, checked like the command line.

Keys are option names without the dashes (`learning_rate = 1e-4`), as in musubi-tuner's config files.
Sections are for humans and flatten: `[optimizer] learning_rate = 1e-4` is `learning_rate = 1e-4`.
Each value goes through the argparse action's own `type` and `choices`, so a value the command line
would refuse is refused here too, as one line naming the file and the key.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

import toml

from hv_common.errors import UserError

NOT_FROM_A_FILE = ("config_file",)  # a config file naming another one would hide where a value came from
MAX_CONFIG_BYTES = 1 << 20  # real config files are a few KB; megabytes of TOML are not one


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's options as {dest: converted value}, ready for `parser.set_defaults`."""
    config_file = _find(path)
    actions = option_actions(parser)
    flat = flatten(_load(config_file), config_file, actions)
    return {key: convert(actions[key], value, f"{config_file}: {key}") for key, value in flat.items()}


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option the file may set, by its key (the option name without `--`)."""
    return {
        action.dest: action
        for action in parser._actions  # argparse has no public list of its actions
        if action.option_strings and action.dest != argparse.SUPPRESS and action.dest != "help"
    }


def _find(path: str) -> Path:
    config_file = Path(path)
    try:
        if config_file.is_file():
            return config_file
        with_suffix = Path(f"{path}.toml")  # musubi-tuner accepts the name without .toml
        if config_file.suffix != ".toml" and with_suffix.is_file():
            return with_suffix
    except OSError as e:  # a name too long for the file system, ...
        raise UserError(f"--config_file {_short(path)}: cannot use it: {e.strerror}") from None
    raise UserError(f"--config_file {path}: no such file ({config_file.absolute()})")


def _load(config_file: Path) -> dict[str, Any]:
    try:
        size = config_file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise UserError(f"{config_file}: {size} bytes is too large for a config file (at most 1 MiB)")
        text = config_file.read_text(encoding="utf-8-sig")  # -sig: a BOM from a Windows editor is not TOML
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file}: cannot read the config file: {e}") from None
    try:
        return toml.loads(text)  # the parser musubi-tuner uses: its users' files read the same here
    except toml.TomlDecodeError as e:
        raise UserError(f"{config_file}: line {e.lineno}: TOML syntax error: {e.msg}") from None
    except Exception as e:  # the toml package fails on some garbage with IndexError, RecursionError, ...
        raise UserError(f"{config_file}: TOML syntax error ({type(e).__name__} in the parser)") from None


def flatten(doc: dict[str, Any], config_file: Path, actions: dict[str, argparse.Action]) -> dict[str, Any]:
    """Top-level keys and the keys of each [section] as one table; a key set twice is an error."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    for name, value in doc.items():
        if isinstance(value, dict) and name not in actions:
            entries = [(key, item, f"[{name}]") for key, item in value.items()]
        else:
            entries = [(name, value, "the top level")]
        for key, item, place in entries:
            if isinstance(item, dict) and place != "the top level":
                raise UserError(
                    f"{config_file}: [{_short(name)}.{_short(key)}]: sections nest one level only; flatten it"
                )
            _check_key(key, item, place, config_file, actions)
            if key in flat:
                raise UserError(
                    f"{config_file}: {key} is set twice, in {where[key]} and in {place}; keep one"
                )
            flat[key], where[key] = item, place
    return flat


def _check_key(
    key: str, value: Any, place: str, config_file: Path, actions: dict[str, argparse.Action]
) -> None:
    if key in NOT_FROM_A_FILE:
        raise UserError(f"{config_file}: {key}: give it on the command line, not inside a config file")
    if key not in actions:
        close = difflib.get_close_matches(key, actions, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see docs/options.md"
        raise UserError(f"{config_file}: unknown option {_short(repr(key))} in {place}{hint}")
    if isinstance(value, dict):
        raise UserError(f"{config_file}: {key}: expected a value, not a table ({key} is an option)")


def convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A TOML value as the command line would have parsed it for this action."""
    if action.nargs == 0:  # store_true / store_false: the value says whether the flag is given
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {_show(value)}")
        return action.const if value else action.default
    if action.nargs in ("*", "+") or isinstance(action.nargs, int):
        return _convert_list(action, value, where)
    if isinstance(value, list):
        raise UserError(f"{where}: expected a single value, got the list {_show(value)}")
    if action.nargs == "?" and isinstance(value, bool):  # `list_lora_targets = true` as the bare flag
        return action.const if value else action.default
    return _convert_one(action, value, where)


def _convert_list(action: argparse.Action, value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise UserError(f'{where}: expected a list, e.g. {action.dest} = ["..."], got {_show(value)}')
    if action.nargs == "+" and not value:
        raise UserError(f"{where}: expected at least one item")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        raise UserError(f"{where}: expected {action.nargs} items, got {len(value)}")
    return [_convert_one(action, item, where) for item in value]


def _convert_one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: expected a single value, got {_show(value)}")
    if action.type is None and not isinstance(value, str):  # a path or a name: "1" is fine, 1 is a slip
        raise UserError(f"{where}: expected a string, got {_show(value)}")
    text = value if isinstance(value, str) else _as_text(value)
    try:
        convert = action.type  # argparse types it loosely; ours are all converter functions
        converted = convert(text) if callable(convert) else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise UserError(f"{where}: {_short(str(e), 200)}") from None
    if action.choices is not None and converted not in action.choices:
        close = difflib.get_close_matches(str(converted), [str(c) for c in action.choices], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        choices = ", ".join(str(c) for c in action.choices)
        raise UserError(f"{where}: invalid choice {_show(value)} (choose from {choices}){hint}")
    return converted


def _as_text(value: Any) -> str:
    """A TOML scalar as command-line text: true stays `true` (no number converter accepts it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _show(value: Any) -> str:
    return _short(json.dumps(value, default=str))  # TOML-like: "text", true, [1, 2]


def _short(text: str, limit: int = 80) -> str:
    """A user's text cut for a one-line message (a 10 MB key must not become a 10 MB line)."""
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"
