"""Print musubi-tuner's defaults for the options our hv_train_network.py also has (for
tests/training/test_args_musubi_defaults.py).

Not a test and not run by CI (it reads a musubi-tuner checkout, e.g. ../musubi-tuner at commit 30c658c). It walks
the syntax tree of its parser (hv_train_network.py's hv_setup_parser and training/parser_common.py's
_add_*_args): an add_argument without default= is None, a store_true flag False. Run from the repository root:

    python tests/helpers/derive_musubi_defaults.py ../musubi-tuner/src/musubi_tuner
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.args import build_parser  # noqa: E402

FILES = ("hv_train_network.py", "training/parser_common.py")


def musubi_defaults(source: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for name in FILES:
        for node in ast.walk(ast.parse((source / name).read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.FunctionDef)
                and (node.name == "hv_setup_parser" or node.name.startswith("_add_"))
            ):
                continue
            for call in ast.walk(node):
                if not (isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "add_argument"):
                    continue
                flags = [
                    a.value
                    for a in call.args
                    if isinstance(a, ast.Constant) and str(a.value).startswith("--")
                ]
                if not flags:
                    continue
                keywords = {k.arg: k.value for k in call.keywords}
                store_true = "action" in keywords and ast.literal_eval(keywords["action"]) == "store_true"
                default = (
                    ast.literal_eval(keywords["default"])
                    if "default" in keywords
                    else (False if store_true else None)
                )
                found.setdefault(flags[0][2:], default)
    return found


if __name__ == "__main__":
    theirs = musubi_defaults(Path(sys.argv[1]))
    ours = {a.dest for a in build_parser()._actions if a.option_strings}
    print({name: theirs[name] for name in sorted(theirs) if name in ours})
