"""Facts written once: the dtype table (hv_common/dtypes.py), the step/epoch name format (hv_common/labels.py)
and the fp8 rule (hunyuan_model/fp8.py). The code is read with `ast`; a second copy of any of them, anywhere
in the packages, entry scripts or benchmarks, fails here before it can diverge from the first."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from hv_common.dtypes import OPTION_NAMES, TABLE

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = {"tests", "docs", "configs"}


def _sources() -> list[Path]:
    return sorted(
        p
        for p in ROOT.rglob("*.py")
        if not any(part.startswith(".") or part in SKIPPED for part in p.relative_to(ROOT).parts)
    )


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.Module) -> Iterator[str]:
    """Every string constant of the code (f-string parts and format specs included), docstrings left out."""
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def _places(owner: str, finds) -> list[str]:
    """`file: what` for each file but `owner` where finds(tree) yields something."""
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel != owner:
            found += [f"{rel}: {what!r}" for what in finds(ast.parse(path.read_text(encoding="utf-8")))]
    return found


def test_the_dtype_table_is_written_once():
    codes = {d.safetensors for d in TABLE}
    options = set(OPTION_NAMES)

    def finds(tree):
        yield from (s for s in _strings(tree) if s in codes)  # a safetensors code: a header table
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):  # {"bf16": ...}: an option-name table
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                yield from (k for k in keys if k in options)
            elif isinstance(node, ast.Tuple | ast.List | ast.Set):  # ("float32", "fp32", ...) again
                names = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in options]
                if len(names) >= 3:
                    yield tuple(names)

    assert not _places("hv_common/dtypes.py", finds), "derive these from hv_common/dtypes.py"


def test_the_step_and_epoch_name_format_is_written_once():
    def finds(tree):
        for s in _strings(tree):
            # the widths of the labels, a literal label, the state folders' suffix
            if re.fullmatch(r"0?[68]d", s) or re.fullmatch(r"step\d+", s) or s.endswith("-state"):
                yield s
        formatters = {"step_label", "epoch_label", "lora_file_name", "preview_stem"}
        for node in ast.walk(tree):  # a label formatter defined again
            if isinstance(node, ast.FunctionDef) and node.name in formatters:
                yield f"def {node.name}"

    assert not _places("hv_common/labels.py", finds), "use hv_common/labels.py"


def test_the_fp8_rule_is_written_once():
    matchers = {"endswith", "startswith", "compile", "match", "fullmatch", "search"}

    def finds(tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in {"is_fp8_target", "is_fp8_weight"}:
                yield f"def {node.name}"
            # the modulation Linears the rule leaves out, matched by a suffix or a pattern
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in matchers:
                for arg in node.args:
                    for s in _strings(ast.Module(body=[ast.Expr(arg)], type_ignores=[])):
                        if "linear" in s and ("_mod" in s or "modulation" in s):
                            yield s

    assert not _places("hunyuan_model/fp8.py", finds), "use hunyuan_model/fp8.py's is_fp8_weight"
