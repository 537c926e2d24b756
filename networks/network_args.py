"""Parse `--network_args key=value ...` into a frozen, typed `NetworkArgs`.

Values are Python literals read with `ast.literal_eval`: nothing in a value is ever executed. Every
problem is a `NetworkArgsError` whose one-line message names the key, the value and what was expected,
so that a typo stops the run in its first second instead of training the wrong thing for hours.
"""

from __future__ import annotations

import ast
import difflib
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hv_common.errors import UserError

logger = logging.getLogger(__name__)


class NetworkArgsError(UserError):
    """A user error in `--network_args` (or in the LoRA selection they describe). Always one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


@dataclass(frozen=True)
class NetworkArgs:
    """The parsed `--network_args`. Patterns are kept as source strings (compiled and checked at parse)."""

    loraplus_lr_ratio: float | None = None
    exclude_patterns: tuple[str, ...] = ()
    include_patterns: tuple[str, ...] = ()
    verbose: bool = False
    rank_dropout: float | None = None
    module_dropout: float | None = None
    conv_dim: int | None = None
    conv_alpha: float | None = None
    # (regex, value) pairs in the order given: the first pattern that fully matches a module name wins.
    rank_patterns: tuple[tuple[str, int], ...] = ()
    alpha_patterns: tuple[tuple[str, float], ...] = ()
    factor: int = -1  # networks.lokr only: how each Linear's sides are split (-1: the most balanced split)


# ---------------------------------------------------------------------------------------------------------
# Value checkers: each takes (key, literal) and returns the typed value or raises NetworkArgsError.


MAX_ITEM_CHARS = 100_000  # a real item is a few hundred characters; megabytes only slow the parser down
MAX_PATTERNS = 1000  # per key; the 720p model has 320 candidate modules: more patterns than that is a mistake


def short(text: str, limit: int = 120) -> str:
    """A user's text cut for a one-line message (a 10 MB value must not become a 10 MB line)."""
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"


def _fail(key: str, value: Any, expected: str) -> NetworkArgsError:
    return NetworkArgsError(f"network_args {key}={short(repr(value))}: expected {expected}")


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `loraplus_lr_ratio=True` is a mistake, not the number 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(key: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise _fail(key, value, "a number > 0, e.g. 4")
    return float(value)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(key, value, "an integer > 0, e.g. 8")
    return value


def _probability(key: str, value: Any) -> float:
    if not _is_number(value) or not 0 <= value < 1:
        raise _fail(key, value, "a number in [0, 1), e.g. 0.1")
    return float(value)


def _factor(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value > 0):
        raise _fail(key, value, "an integer > 0, or -1 for the most balanced split (the default)")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "True or False")
    return value


def compile_pattern(key: str, pattern: Any) -> re.Pattern[str]:
    """Compile one regex of `key`, or say why not (with `re`'s own message)."""
    if not isinstance(pattern, str):
        raise _fail(key, pattern, "each pattern to be a string, e.g. r'.*single_blocks.*'")
    try:
        compiled = re.compile(pattern)
        nested = has_nested_repeat(pattern)
    except re.error as e:
        raise NetworkArgsError(f"network_args {key}: invalid regex {short(repr(pattern))}: {e}") from None
    except (RecursionError, OverflowError, MemoryError) as e:  # pathological nesting or repeat counts
        raise NetworkArgsError(
            f"network_args {key}: invalid regex {short(repr(pattern))}: {type(e).__name__}"
        ) from None
    if nested:
        raise NetworkArgsError(
            f"network_args {key}: regex {short(repr(pattern))} repeats a group that itself repeats, like "
            "(a+)+ or (.*)*: matching can take hours; write it without the nested repetition"
        )
    return compiled


def has_nested_repeat(pattern: str) -> bool:
    """A repetition inside an unbounded repetition: the shape of catastrophic backtracking (`(.*)*x`).

    Every node's sub-patterns are walked, whatever the node (groups, alternatives, lookarounds, conditionals
    `(?(1)a|(.*)*Z)`, atomic groups): a new kind of node cannot hide a nested repeat. Other slow shapes
    (`(.|.)*`) are caught where patterns meet the module names (networks/pattern_guard.py).
    """
    import re._constants as c  # noqa: PLC0415 (private, but the only parse tree of `re`)
    import re._parser as parser  # noqa: PLC0415

    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT)

    def subpatterns(arg) -> list:
        if isinstance(arg, parser.SubPattern):
            return [arg]
        if isinstance(arg, (tuple, list)):
            return [sub for item in arg for sub in subpatterns(item)]
        return []

    def walk(items, inside_unbounded: bool) -> bool:
        for op, arg in items:
            if op in repeats:
                _low, high, body = arg
                if (inside_unbounded and high > 1) or walk(body, inside_unbounded or high == c.MAXREPEAT):
                    return True
            elif any(walk(sub, inside_unbounded) for sub in subpatterns(arg)):
                return True
        return False

    return walk(parser.parse(pattern), False)


def _check_count(key: str, value: Any) -> None:
    if len(value) > MAX_PATTERNS:
        raise NetworkArgsError(
            f"network_args {key}: {len(value)} patterns; at most {MAX_PATTERNS} are accepted (the 720p model has "
            "320 candidate modules): join them into fewer regexes, e.g. r'.*(img_attn|txt_attn).*'"
        )


def _patterns(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        quoted = f"r'{value}'" if "'" not in value and not value.endswith("\\") else repr(value)
        raise _fail(key, value, f"a list of strings, not a string: write {key}=[{quoted}]")
    if not isinstance(value, (list, tuple)):
        raise _fail(key, value, f"a list of regex strings, e.g. {key}=[r'.*single_blocks.*']")
    _check_count(key, value)
    for pattern in value:
        compile_pattern(key, pattern)
    return tuple(value)


def _pattern_map(key: str, value: Any, check: Callable[[str, Any], Any]) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, dict):
        raise _fail(key, value, f"a dict of regex -> number, e.g. {key}={{r'.*single_blocks.*': 8}}")
    _check_count(key, value)
    pairs = []
    for pattern, number in value.items():
        compile_pattern(key, pattern)
        pairs.append((pattern, check(f"{key}[{pattern!r}]", number)))
    return tuple(pairs)


def _conv(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def accept(key: str, value: Any) -> Any:
        checked = check(key, value)
        logger.warning(
            "network_args %s=%r is accepted for musubi-tuner configs but has no effect: "
            "HunyuanVideo's blocks have no convolution",
            key,
            value,
        )
        return checked

    return accept


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "loraplus_lr_ratio": _positive_number,
    "exclude_patterns": _patterns,
    "include_patterns": _patterns,
    "verbose": _bool,
    "rank_dropout": _probability,
    "module_dropout": _probability,
    "conv_dim": _conv(_positive_int),
    "conv_alpha": _conv(_positive_number),
    "rank_patterns": lambda k, v: _pattern_map(k, v, _positive_int),
    "alpha_patterns": lambda k, v: _pattern_map(k, v, _positive_number),
    "factor": _factor,
}
KNOWN_KEYS: tuple[str, ...] = tuple(_CHECKS)


# ---------------------------------------------------------------------------------------------------------
# Reading one item.


def _literal_hint(key: str, text: str) -> str:
    word = text.strip()
    if word.lower() in ("true", "false", "none"):
        return f"did you mean {key}={word.capitalize()}?"
    if key in ("exclude_patterns", "include_patterns"):
        return f"write a list of quoted regexes, e.g. {key}=[r'.*single_blocks.*']"
    if key in ("rank_patterns", "alpha_patterns"):
        return f"write a dict of quoted regexes, e.g. {key}={{r'.*single_blocks.*': 8}}"
    return "values are Python literals: numbers, True/False, quoted strings, lists, dicts"


def _duplicate_dict_key(tree: ast.Expression) -> Any:
    """The first key given twice in a top-level dict literal (which Python would silently collapse), or None."""
    if not isinstance(tree.body, ast.Dict):
        return None
    seen: list[Any] = []
    for node in tree.body.keys:
        key = ast.literal_eval(node) if node is not None else None
        if key in seen:
            return key
        seen.append(key)
    return None


def read_literal(key: str, text: str) -> Any:
    """`ast.literal_eval` of a value, with a one-line error that says what to write instead."""
    if not text.strip():
        raise NetworkArgsError(f"network_args {key}=: missing value after '='; {_literal_hint(key, text)}")
    try:
        with (
            warnings.catch_warnings()
        ):  # '.*\.linear' without r'' warns "invalid escape": it means what it says
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
        value = ast.literal_eval(tree)
        duplicate = _duplicate_dict_key(tree)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        # literal_eval refuses names, calls and operators: nothing is executed, we only say what to write.
        raise NetworkArgsError(
            f"network_args {key}={short(repr(text))}: not a Python literal; {_literal_hint(key, text)}"
        ) from None
    if duplicate is not None:
        raise NetworkArgsError(
            f"network_args {key}={short(repr(text))}: pattern {short(repr(duplicate))} is given twice"
        )
    return value


def _split_item(item: Any, refused: Mapping[str, str]) -> tuple[str, str]:
    if not isinstance(item, str):
        raise NetworkArgsError(f"network_args item {item!r}: expected a 'key=value' string")
    if len(item) > MAX_ITEM_CHARS:
        raise NetworkArgsError(
            f"network_args item {short(repr(item))}: too long (at most {MAX_ITEM_CHARS} characters)"
        )
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
        raise NetworkArgsError(
            f"network_args item {item!r}: missing '=': expected key=value, e.g. verbose=True"
        )
    if not key:
        raise NetworkArgsError(f"network_args item {item!r}: empty key before '=': expected key=value")
    if key in refused:
        raise NetworkArgsError(f"network_args item {short(repr(item))}: {refused[key]}")
    if key not in _CHECKS:
        known = [k for k in KNOWN_KEYS if k not in refused]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise NetworkArgsError(
            f"network_args item {item!r}: unknown key {key!r}; {hint}known keys: {', '.join(known)}"
        )
    return key, text


def parse_network_args(items: Sequence[str] | None, refused: Mapping[str, str] | None = None) -> NetworkArgs:
    """Parse `key=value` strings (CLI or config file) into `NetworkArgs`; raise `NetworkArgsError` if any is bad.

    `refused`: the keys the calling network module does not take, each with the one-line reason it gives."""
    if items is None:
        return NetworkArgs()
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise NetworkArgsError(
            f"network_args {items!r}: expected a list of 'key=value' strings, e.g. [\"loraplus_lr_ratio=4\"]"
        )
    values: dict[str, Any] = {}
    for item in items:
        key, text = _split_item(item, refused or {})
        if key in values:
            raise NetworkArgsError(f"network_args item {item!r}: {key} is given twice")
        values[key] = _CHECKS[key](key, read_literal(key, text))
    return NetworkArgs(**values)
