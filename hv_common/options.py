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
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from hv_common.errors import UserError

_META = "hv_option"
_SECTION = "hv_option_section"


def option(
    default: Any = None,
    help: str = "",
    *,
    type: Callable[[str], Any] | None = None,
    choices: tuple[Any, ...] | None = None,
    nargs: str | int | None = None,
    metavar: str | tuple[str, ...] | None = None,
    const: Any = None,
    section: str | None = None,
    required: bool = False,
    refused: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag `--<field name>`. `section`: the `--help` section when
    it is not the class's own (`""`: the parser's list of options, no section). `required`: the flag must be
    given (argparse says so), and the field has no default. `refused`: why this project cannot do what the
    option asks (a musubi-tuner option kept by name so that it is not "unknown"): giving it any value but the
    default stops with one line saying so, from the command line or a config file."""
    if refused is not None:
        help = f"not supported here: {refused}"
    spec = dict(
        help=help,
        type=type,
        choices=choices,
        nargs=nargs,
        metavar=metavar,
        const=const,
        section=section,
        refused=refused,
    )
    if required:
        return dataclasses.field(metadata={_META: {**spec, "required": True}})
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
    """One argument group (titled by the class's docstring, or `title`; `""`: the parser's own list) with a flag
    per option field."""
    group: Any = parser if title == "" else parser.add_argument_group(title or _title(cls))
    for f, spec, annotation in option_fields(cls):
        group.add_argument(f"--{f.name}", **_argument_kwargs(f, spec, annotation))


def _title(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().split("\n")[0]


def _argument_kwargs(f: dataclasses.Field, spec: dict[str, Any], annotation: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"help": spec["help"], "dest": f.name, "default": f.default}
    if spec.get("required"):
        kwargs.update(required=True, default=None)
    if annotation is bool:
        kwargs["action"] = "store_true"
        return kwargs
    nargs = spec["nargs"] or ("*" if _is_tuple(annotation) else None)
    if nargs == "*":  # a KEY=VALUE list: given twice, it adds up
        kwargs["action"] = AddUp
    given = {"type": spec["type"], "choices": spec["choices"], "nargs": nargs, "metavar": spec["metavar"]}
    kwargs.update({key: value for key, value in given.items() if value is not None})
    if spec["const"] is not None:
        kwargs["const"] = spec["const"]
    return kwargs


class _GivenList(list):
    """A list option's values as given on this command line (not a default): the next occurrence extends it."""


class AddUp(argparse.Action):
    """A list option given twice adds up: `--network_args a=1 --network_args b=2` is both, where argparse keeps
    only the last (musubi-tuner too: a LoRA+ ratio then silently vanished). The first occurrence on a command
    line replaces the default (e.g. a config file's list: the command line wins), later ones extend it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Any = None,
    ) -> None:
        current = vars(namespace)[self.dest]
        earlier = list(current) if isinstance(current, _GivenList) else []
        setattr(namespace, self.dest, _GivenList(earlier + list(values)))


def options_from(cls: type, namespace: argparse.Namespace) -> Any:
    """The dataclass from a parsed namespace (lists become tuples, so the result is hashable and frozen)."""
    values = {}
    for f, _, _ in option_fields(cls):
        value = vars(namespace)[f.name]
        values[f.name] = tuple(value) if isinstance(value, list) else value
    refuse_unsupported(cls, values)
    return cls(**values)


def refused_reason(cls: type, name: str) -> str | None:
    """Why option `name` of `cls` is refused, or None for an option this project carries out."""
    for f, spec, _ in option_fields(cls):
        if f.name == name:
            return spec.get("refused")
    return None


def refuse_unsupported(cls: type, values: Mapping[str, Any]) -> None:
    """One line for the first refused option given a value other than its default."""
    for f, spec, _ in option_fields(cls):
        reason = spec.get("refused")
        if reason is None or f.name not in values:
            continue
        value = values[f.name]
        default = f.default
        if (tuple(value) if isinstance(value, list) else value) != default:
            raise UserError(f"--{f.name} is not supported here: {reason}")


def option_names(cls: type) -> list[str]:
    return [f.name for f, _, _ in option_fields(cls)]


# --- a configuration made of option groups ---------------------------------------------------------------------
# A frozen dataclass whose fields are option dataclasses (`config.network.network_dim`): one parser for all of
# them, flag names unique across the groups, and each flag in the `--help` section its field names.


def option_groups(config_cls: type) -> list[tuple[str, type]]:
    """(field name, option dataclass) of each group of a configuration class, in declaration order."""
    hints = typing.get_type_hints(config_cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(config_cls)]


def shown_in(section: str) -> Any:
    """A configuration's group whose flags all show in `section` of `--help`, whatever their own sections say:
    for a group that commands share but show in different places."""
    return dataclasses.field(metadata={_SECTION: section})


def add_option_groups(parser: argparse.ArgumentParser, config_cls: type, sections: Sequence[str]) -> None:
    """Every flag of every group, in the `--help` sections named by `sections`, in that order (`""`: the
    parser's own list). A section not in `sections` is a programming error."""
    by_section: dict[str, list[tuple[dataclasses.Field, dict[str, Any], Any]]] = {s: [] for s in sections}
    placed: dict[str, str | None] = {f.name: f.metadata.get(_SECTION) for f in dataclasses.fields(config_cls)}
    for field_name, cls in option_groups(config_cls):
        for f, spec, annotation in option_fields(cls):
            own: str = _title(cls) if spec["section"] is None else spec["section"]
            shown = placed[field_name]
            section = own if shown is None else shown
            by_section[section].append((f, spec, annotation))  # KeyError: add the section to `sections`
    for section, entries in by_section.items():
        target: Any = parser.add_argument_group(section) if section else parser
        for f, spec, annotation in entries:
            target.add_argument(f"--{f.name}", **_argument_kwargs(f, spec, annotation))


def config_from_values(config_cls: type, values: Mapping[str, Any]) -> Any:
    """The configuration from flat option values (a parsed namespace's, or a few given by name: the others keep
    their defaults). Lists become tuples; a name no group has is a TypeError, as a wrong keyword is."""
    unknown = set(values) - {name for _, cls in option_groups(config_cls) for name in option_names(cls)}
    if unknown:
        raise TypeError(f"{config_cls.__name__}: no option {', '.join(sorted(unknown))}")
    groups = {}
    for field_name, cls in option_groups(config_cls):
        mine = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in option_names(cls)
        }
        refuse_unsupported(cls, mine)
        groups[field_name] = cls(**mine)
    return config_cls(**groups)


def option_values(config: Any) -> dict[str, Any]:
    """{option name: value} over every group of a configuration (what the command line and config files name)."""
    return {
        name: getattr(getattr(config, field_name), name)
        for field_name, cls in option_groups(type(config))
        for name in option_names(cls)
    }


def option_defaults(config_cls: type) -> dict[str, Any]:
    return {f.name: f.default for _, cls in option_groups(config_cls) for f, _, _ in option_fields(cls)}
