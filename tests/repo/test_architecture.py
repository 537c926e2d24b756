"""docs/architecture.md's import rules, checked on the code: one direction of dependency, no back-edges.

Every `import` / `from ... import` of the project's packages is read with `ast` (module level and inside
functions alike: a lazy import is still an arrow), and each arrow must be one the document allows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "hv_common",
    "hunyuan_model",
    "networks",
    "dataset",
    "lora_files",
    "memory",
    "caching",
    "generation",
    "run_report",
    "training",
)

# Who may import whom (besides itself): the table in docs/architecture.md, "What may import what".
ALLOWED: dict[str, set[str]] = {
    "hv_common": set(),
    "hunyuan_model": {"hv_common"},
    "networks": {"hv_common"},
    "dataset": {"hv_common"},
    "lora_files": {"hv_common", "hunyuan_model", "networks"},
    "memory": {"hv_common", "hunyuan_model", "networks"},
    "caching": {"hv_common", "hunyuan_model", "dataset"},
    "generation": {"hv_common", "hunyuan_model", "networks", "lora_files", "dataset"},
    "run_report": {"hv_common", "dataset"},
    "training": {
        "hv_common",
        "hunyuan_model",
        "networks",
        "dataset",
        "lora_files",
        "memory",
        "generation",
        "run_report",
    },
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


def test_no_package_imports_against_the_direction_of_dependency():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in _imported_packages(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "back-edges (see docs/architecture.md):\n" + "\n".join(wrong)


def test_every_package_is_in_the_table():
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk == set(ALLOWED), "a package was added or removed: update docs/architecture.md and ALLOWED"


def test_the_architecture_document_names_every_package():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [p for p in PACKAGES if f"`{p}/`" not in text]
    assert not missing, f"docs/architecture.md does not describe {missing}"


def test_nothing_points_outside_the_repository():
    # A user's clone has no ../shared: docs, code and tests must stand on their own.
    files = [
        p
        for p in ROOT.rglob("*")
        if p.suffix in {".md", ".py", ".toml"}
        and not any(d.startswith(".") or d == "venv" for d in p.parts[len(ROOT.parts) :])
    ]
    pointing = [
        str(p.relative_to(ROOT))
        for p in files
        if p != Path(__file__) and any(s in p.read_text(encoding="utf-8") for s in ('"shared"', "../shared"))
    ]
    assert not pointing, f"these pages point at ../shared: {pointing}"


def test_the_layout_names_every_module():
    # The layout drawing is how a newcomer finds code: each module of each package must be named in it.
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = text.split("## The layout", 1)[1].split("## What may import what", 1)[0]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    missing = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.stem != "__init__" and path.stem not in words
    ]
    assert not missing, f"docs/architecture.md's layout does not name {missing}"


def test_tools_are_named_in_the_layout_and_never_import_musubi_tuner():
    # tools/ reads a musubi-tuner checkout as text (its syntax tree): importing it would need its dependencies
    # and run its code.
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = text.split("## The layout", 1)[1].split("## What may import what", 1)[0]
    scripts = sorted((ROOT / "tools").glob("*.py"))
    assert scripts, "tools/ has no scripts"
    assert [p.stem for p in scripts if p.stem not in layout] == []
    importing = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            importing += [path.name for n in names if n.split(".")[0] == "musubi_tuner"]
    assert importing == []
