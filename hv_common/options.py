"""Options declared once: a frozen dataclass field carries its flag's help text, converter and default, and the
argparse parser is built from the fields.

    @dataclass(frozen=True)
    class NetworkOptions:
        '''LoRA network'''                       # the help section's title
        network_dim: int | None = option(None, "LoRA rank (default 4)", type=positive_int)
        network_args: tuple[str, ...] = option((), "key=value ...", metavar="KEY=VALUE")

    add_options(parser, NetworkOptions)           # --network_dim, --network_args
    NetworkOptions.from_namespace(...)            # via options_from(NetworkOptions, namespace)

Rules, so that a field reads like the flag it is: a `bool` field is a `store_true` flag; a `tuple[...]` field
takes any number of values (`nargs="*"`, or the `nargs` given) and is stored as a tuple; everything else takes
one value through `type`. The dataclass is the typed result: code past the parser reads `options.network_dim`,
never a name built from strings. Cross-field checks live in the dataclass's `__post_init__`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any

_META = "hv_option"


def option(
    default: Any = None,
    help: str = "",
    *,
    type: Callable[[str], Any] | None = None,
    choices: tuple[Any, ...] | None = None,
    nargs: str | int | None = None,
    metavar: str | None = None,
    const: Any = None,
) -> Any:
    """A dataclass field that is also a command-line flag `--<field name>`."""
    spec = {"help": help, "type": type, "choices": choices, "nargs": nargs, "metavar": metavar, "const": const}
    return dataclasses.field(default=default, metadata={_META: spec})


def option_fields(cls: type) -> Iterator[tuple[dataclasses.Field, dict[str, Any], Any]]:
    """(field, its flag spec, its resolved annotation) for each field declared with `option`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _META in f.metadata:
            yield f, f.metadata[_META], hints[f.name]


def _is_tuple(annotation: Any) -> bool:
    return typing.get_origin(annotation) is tuple


def add_options(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """One argument group (titled by the class's docstring, or `title`) with a flag per option field."""
    doc = (cls.__doc__ or cls.__name__).strip().split("\n")[0]
    group = parser.add_argument_group(title or doc)
    for f, spec, annotation in option_fields(cls):
        kwargs: dict[str, Any] = {"help": spec["help"], "dest": f.name}
        if annotation is bool:
            kwargs.update(action="store_true", default=f.default)
        else:
            kwargs["default"] = f.default
            nargs = spec["nargs"] or ("*" if _is_tuple(annotation) else None)
            for key, value in (("type", spec["type"]), ("choices", spec["choices"]), ("nargs", nargs),
                               ("metavar", spec["metavar"]), ("const", spec["const"])):  # fmt: skip
                if value is not None:
                    kwargs[key] = value
        group.add_argument(f"--{f.name}", **kwargs)


def options_from(cls: type, namespace: argparse.Namespace) -> Any:
    """The dataclass from a parsed namespace (lists become tuples, so the result is hashable and frozen)."""
    values = {}
    for f, _, _ in option_fields(cls):
        value = vars(namespace)[f.name]
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def option_names(cls: type) -> list[str]:
    return [f.name for f, _, _ in option_fields(cls)]
