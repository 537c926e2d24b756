"""docs/options.md's "Side by side with musubi-tuner" is what tools/option_table.py renders now, no musubi-tuner
HunyuanVideo option is missing but those listed below, and the musubi-tuner source reader works (on a fake
source: CI has no musubi-tuner checkout)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hv_common.options import add_options, option

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str) -> ModuleType:
    """A script of tools/ (a folder of scripts, not a package), imported by its path."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


option_table = _tool("option_table")
reader = _tool("read_musubi_options")


def _rows_by_command() -> dict[str, list]:
    musubi = option_table.load_musubi()
    return {c.name: option_table.compare(c, musubi["commands"][c.name]) for c in option_table.our_commands()}


def test_the_page_shows_the_table_as_it_renders_now():
    page = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    shown = option_table.section_in(page)
    assert shown is not None, (
        "docs/options.md has no side-by-side section: run python tools/option_table.py --write"
    )
    assert shown == option_table.render(option_table.load_musubi()).strip("\n"), (
        "docs/options.md's side-by-side table is stale: run python tools/option_table.py --write"
    )
    assert option_table.HEADING in page.split(option_table.BEGIN)[0]


def test_no_musubi_option_is_missing():
    # every musubi-tuner option of the six commands is here: the same, different on purpose (said in the
    # notes), or refused with its reason
    rows = _rows_by_command()
    assert len(rows) == 6
    for command, command_rows in rows.items():
        missing = [row.flag for row in command_rows if row.status == "missing"]
        assert missing == [], f"{command}: musubi-tuner options not here: {missing}"


def test_every_difference_says_why():
    for command, command_rows in _rows_by_command().items():
        unexplained = [
            row.flag
            for row in command_rows
            if row.status == "differs" and (command, row.flag) not in option_table.ON_PURPOSE
        ]
        assert unexplained == [], f"{command}: add the reason to tools/option_table.py's ON_PURPOSE"


def test_every_musubi_option_has_one_row_and_a_known_status():
    musubi = option_table.load_musubi()
    for command, command_rows in _rows_by_command().items():
        theirs = [o["flag"] for o in musubi["commands"][command]]
        assert [row.flag for row in command_rows if row.theirs is not None] == theirs
        assert {row.status for row in command_rows} <= set(option_table.STATUSES)


def test_the_data_is_musubi_tuners_hunyuan_video_commands_at_a_known_commit():
    data = json.loads((ROOT / "tests" / "data" / "musubi_options.json").read_text(encoding="utf-8"))
    assert data["musubi_commit"].startswith("30c658c")
    assert set(data["commands"]) == {c.name for c in reader.COMMANDS}
    train = {o["flag"]: o for o in data["commands"]["hv_train_network.py"]}
    assert train["--network_dim"]["type"] == "int" and train["--fp8_base"]["action"] == "store_true"


def test_the_comparison_reads_values_not_spellings():
    side = option_table.Side
    assert option_table.differences(side("[str]", None, None, False), side("[str]", (), None, False)) == []
    assert option_table.differences(side("str", "", None, False), side("str", None, None, False)) == []
    assert (
        option_table.differences(
            side("int×2", [256, 256], None, False), side("int×2", (256, 256), None, False)
        )
        == []
    )
    assert (
        option_table.differences(side("str", "a", ["x", "y"], False), side("str", "a", ["y", "x"], False))
        == []
    )
    how = option_table.differences(side("int", 4, None, True), side("float", 8, ["a"], False))
    assert how == [
        "type int there, float here",
        "default `4` there, `8` here",
        "choices any there, `a` here",
        "required there, optional here",
    ]


@dataclass(frozen=True)
class _FakeOptions:
    """a fake command's options"""

    same: int | None = option(None, "as musubi-tuner's", type=int)
    other_default: int = option(3, "musubi-tuner's is 4", type=int)
    refused_one: bool = option(False, refused="needs a thing")
    ours_only: str | None = option(None, "not in musubi-tuner")


def _fake_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_options(parser, _FakeOptions, title="")
    return parser


def _musubi_option(flag: str, **given) -> dict:
    plain = {"flag": flag, "aliases": [], "type": "int", "default": None, "choices": None, "action": None}
    return {**plain, "nargs": None, "required": False, "help": "", **given}


def test_each_status_from_a_fake_command():
    command = option_table.OurCommand("fake.py", _fake_parser, _FakeOptions, {"same": "why"})
    musubi = [
        _musubi_option("--same"),
        _musubi_option("--other_default", default=4),
        _musubi_option("--refused_one", type=None, action="store_true", default=False),
        _musubi_option("--gone"),
    ]
    rows = {row.flag: (row.status, row.notes) for row in option_table.compare(command, musubi)}
    assert rows == {
        "--same": ("same", "accepted, logs one line: not implemented yet (why)"),
        "--other_default": ("differs", "default `4` there, `3` here"),
        "--refused_one": ("refused", "needs a thing"),
        "--gone": ("missing", ""),
        "--ours_only": ("ours adds", ""),
    }
    rendered = option_table.render({"musubi_commit": "30c658c4", "commands": {"fake.py": musubi}}, [command])
    assert "1 same, 1 differs, 1 refused, 1 ours adds, 1 missing." in rendered
    assert (
        "| --refused_one | bool, default `False` | bool, default `False` | refused | needs a thing |"
        in rendered
    )


def test_write_replaces_only_the_section(tmp_path):
    first = option_table.with_section("# Page\n\ntext\n", "generated one")
    assert first.endswith(
        f"{option_table.HEADING}\n\n{option_table.PROSE}\n\n{option_table.BEGIN}\n"
        f"generated one\n{option_table.END}\n"
    )
    second = option_table.with_section(first + "\nafter\n", "generated two")
    assert option_table.section_in(second) == "generated two" and second.endswith("\nafter\n")
    assert second.count(option_table.HEADING) == 1


# --- the reader, on a fake musubi-tuner source --------------------------------------------------------------

FAKE_COMMON = """
import argparse
from accelerate.utils import DynamoBackend


def _add_network_args(parser):
    parser.add_argument("--network_dim", type=int, default=None, help="rank / " "ランク")
    parser.add_argument("--network_args", type=str, default=None, nargs="*", help=f"args {1 + 1}")


def _add_other_args(parser):
    parser.add_argument("--fp8_base", action="store_true", help="fp8" + " base")
    parser.add_argument("--dynamo_backend", type=str, default="NO", choices=[e.value for e in DynamoBackend])


def _unused(parser):
    parser.add_argument("--never_added")


def setup_parser_common():
    parser = argparse.ArgumentParser()
    _add_other_args(parser)
    _add_network_args(parser)
    return parser
"""

FAKE_TRAIN = """
def hv_setup_parser(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--dit_in_channels", "-c", type=int, default=16)
    return parser
"""

FAKE_GENERATE = """
import argparse
import torch


def setup_parser_compile(parser):
    parser.add_argument("--compile_mode", default="default", choices=("default", "max-autotune"))


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--video_size", type=int, nargs=2, default=[256, 256])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", required=True)
    parser.add_argument("positional")
    setup_parser_compile(parser)
    return parser.parse_args()
"""


def _fake_musubi(root: Path) -> Path:
    source = root / "src" / "musubi_tuner"
    (source / "training").mkdir(parents=True)
    (source / "training" / "parser_common.py").write_text(FAKE_COMMON, encoding="utf-8")
    (source / "hv_train_network.py").write_text(FAKE_TRAIN, encoding="utf-8")
    (source / "hv_generate_video.py").write_text(FAKE_GENERATE, encoding="utf-8")
    for name in ("cache_latents.py", "cache_text_encoder_outputs.py"):
        (source / name).write_text(
            "def setup_parser_common():\n    parser.add_argument('--dataset_config', required=True)\n"
            "def hv_setup_parser(parser):\n    parser.add_argument('--skip_existing', action='store_true')\n",
            encoding="utf-8",
        )
    for name in ("convert_lora.py", "merge_lora.py"):
        (source / name).write_text(
            "def parse_args():\n    parser.add_argument('--input')\n", encoding="utf-8"
        )
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (root / ".git" / "packed-refs").write_text(
        "# pack-refs with: peeled\n" + "ab" * 20 + " refs/heads/main\n", encoding="utf-8"
    )
    return source


def test_the_reader_follows_the_parser_building_calls_of_a_fake_source(tmp_path):
    read = reader.read_musubi(_fake_musubi(tmp_path))
    assert read["musubi_commit"] == "ab" * 20
    train = read["commands"]["hv_train_network.py"]
    assert [o["flag"] for o in train] == [
        "--fp8_base",
        "--dynamo_backend",
        "--network_dim",
        "--network_args",
        "--dit_in_channels",
    ]
    by_flag = {o["flag"]: o for o in train}
    assert by_flag["--network_dim"] == {
        "flag": "--network_dim",
        "aliases": [],
        "type": "int",
        "default": None,
        "choices": None,
        "action": None,
        "nargs": None,
        "required": False,
        "help": "rank / ランク",
    }
    assert by_flag["--network_args"]["nargs"] == "*" and by_flag["--network_args"]["help"] == "args {1 + 1}"
    assert by_flag["--fp8_base"]["default"] is False and by_flag["--fp8_base"]["help"] == "fp8 base"
    assert by_flag["--dynamo_backend"]["choices"] == {"expression": "[e.value for e in DynamoBackend]"}
    assert by_flag["--dit_in_channels"]["aliases"] == ["-c"]
    generate = {o["flag"]: o for o in read["commands"]["hv_generate_video.py"]}
    assert list(generate) == ["--video_size", "--device", "--compile_mode"]
    assert generate["--video_size"]["default"] == [256, 256] and generate["--video_size"]["nargs"] == 2
    assert generate["--device"]["default"] == {"expression": "'cuda' if torch.cuda.is_available() else 'cpu'"}
    assert generate["--device"]["required"] is True
    assert generate["--compile_mode"]["choices"] == ["default", "max-autotune"]
    assert read["commands"]["cache_latents.py"][0]["required"] is True


def test_the_reader_writes_json(tmp_path):
    out = tmp_path / "options.json"
    assert reader.main([str(_fake_musubi(tmp_path)), "--out", str(out)]) == 0
    assert set(json.loads(out.read_text(encoding="utf-8"))["commands"]) == {c.name for c in reader.COMMANDS}
