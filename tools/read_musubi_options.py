"""Read musubi-tuner's HunyuanVideo command lines from its source, by syntax tree, into JSON.

For maintainers, not shipped, not run by CI (CI has no musubi-tuner checkout): it writes
tests/data/musubi_options.json, which is committed and which tools/option_table.py compares with our parsers.
Nothing of musubi-tuner is imported: each command's parser-building function is walked in source order, its
`add_argument` calls are recorded, and calls to other functions of the same file (`_add_*_args`,
`setup_parser_compile`) are followed.

    python tools/read_musubi_options.py ../musubi-tuner/src/musubi_tuner > tests/data/musubi_options.json
    python tools/read_musubi_options.py ../musubi-tuner/src/musubi_tuner --out tests/data/musubi_options.json
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Command:
    """A command: its name, and the (file, function) pairs that build its parser, in the order it calls them."""

    name: str
    builders: tuple[tuple[str, str], ...]


# musubi-tuner's HunyuanVideo entry points, with the functions each main() calls to build its parser.
COMMANDS = (
    Command(
        "hv_train_network.py",
        (("training/parser_common.py", "setup_parser_common"), ("hv_train_network.py", "hv_setup_parser")),
    ),
    Command(
        "cache_latents.py",
        (("cache_latents.py", "setup_parser_common"), ("cache_latents.py", "hv_setup_parser")),
    ),
    Command(
        "cache_text_encoder_outputs.py",
        (
            ("cache_text_encoder_outputs.py", "setup_parser_common"),
            ("cache_text_encoder_outputs.py", "hv_setup_parser"),
        ),
    ),
    Command("hv_generate_video.py", (("hv_generate_video.py", "parse_args"),)),
    Command("convert_lora.py", (("convert_lora.py", "parse_args"),)),
    Command("merge_lora.py", (("merge_lora.py", "parse_args"),)),
)

_NOT_A_LITERAL = object()


def _value(node: ast.expr | None) -> Any:
    """A literal's value, or _NOT_A_LITERAL (a computed default such as `"cuda" if ... else "cpu"`)."""
    if node is None:
        return _NOT_A_LITERAL
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_A_LITERAL


def _text(node: ast.expr) -> str:
    """A help text: a literal, an f-string (its expressions kept as written) or strings joined with `+`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"
            for part in node.values
            if isinstance(part, (ast.Constant, ast.FormattedValue))
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return ast.unparse(node)


def _rendered(node: ast.expr | None, missing: Any) -> Any:
    """A keyword's value as JSON: the literal (lists for tuples), its source text when it is computed, or
    `missing` when it is not given."""
    if node is None:
        return missing
    value = _value(node)
    if value is _NOT_A_LITERAL:
        return {"expression": ast.unparse(node)}
    return list(value) if isinstance(value, (tuple, set)) else value


def _argument(call: ast.Call) -> dict[str, Any] | None:
    """One option from an `add_argument(...)` call, or None for a positional argument."""
    flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    flags = [f for f in flags if f.startswith("-")]
    if not flags:
        return None
    keywords = {k.arg: k.value for k in call.keywords if k.arg is not None}
    action = _rendered(keywords.get("action"), None)
    if "default" in keywords:
        default = _rendered(keywords["default"], None)
    else:  # argparse's own default: False for store_true, True for store_false, else None
        default = {"store_true": False, "store_false": True}.get(action) if isinstance(action, str) else None
    type_node = keywords.get("type")
    flag = max(flags, key=len)
    return {
        "flag": flag,
        "aliases": [f for f in flags if f != flag],
        "type": None if type_node is None else ast.unparse(type_node),
        "default": default,
        "choices": _rendered(keywords.get("choices"), None),
        "action": action,
        "nargs": _rendered(keywords.get("nargs"), None),
        "required": bool(_rendered(keywords.get("required"), False)),
        "help": "" if "help" not in keywords else _text(keywords["help"]),
    }


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _calls_in_order(function: ast.FunctionDef) -> list[ast.Call]:
    """The calls in a function's body in source order (ast.walk is breadth-first: sort by position)."""
    calls = [node for node in ast.walk(function) if isinstance(node, ast.Call)]
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def options_of(path: Path, function_name: str) -> list[dict[str, Any]]:
    """The options that `function_name` of the file at `path` adds, following calls to the file's own
    functions (each followed once)."""
    functions = _functions(ast.parse(path.read_text(encoding="utf-8")))
    if function_name not in functions:
        raise SystemExit(f"error: {path} has no function {function_name}")
    found: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        seen.add(name)
        for call in _calls_in_order(functions[name]):
            if isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument":
                option = _argument(call)
                if option is not None:
                    found.append(option)
            elif isinstance(call.func, ast.Name) and call.func.id in functions and call.func.id not in seen:
                visit(call.func.id)

    visit(function_name)
    return found


def commit_of(source: Path) -> str | None:
    """The commit of the git checkout holding `source`, read from its .git folder (no git needed)."""
    for folder in (source.resolve(), *source.resolve().parents):
        git = folder / ".git"
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head
        ref = head[len("ref: ") :]
        if (git / ref).is_file():
            return (git / ref).read_text(encoding="utf-8").strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        return None
    return None


def read_musubi(source: Path) -> dict[str, Any]:
    """Every option of each HunyuanVideo command of the musubi-tuner sources at `source`
    (its src/musubi_tuner folder)."""
    commands = {}
    for command in COMMANDS:
        options: list[dict[str, Any]] = []
        for file, function in command.builders:
            options += options_of(source / file, function)
        commands[command.name] = options
    return {"musubi_commit": commit_of(source), "commands": commands}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="musubi-tuner's src/musubi_tuner folder")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = json.dumps(read_musubi(args.source), indent=1, ensure_ascii=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
