"""musubi-tuner's documented HunyuanVideo command lines run here unchanged but for paths and lengths
(tests/data/musubi_doc_commands.toml): each succeeds and writes what it should, or, for what this machine lacks
(bitsandbytes), stops with the one line that names it, writing nothing.

Each runs in-process through its entry script's main(), in a folder of its own whose models/ and demo/ are the
cached demo's, on one image (one step per training epoch). An `accelerate launch --mixed_precision X` line
passes X on as accelerate does (ACCELERATE_MIXED_PRECISION).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import toml

ROOT = Path(__file__).resolve().parents[2]
COMMANDS: list[dict[str, Any]] = toml.loads(
    (ROOT / "tests" / "data" / "musubi_doc_commands.toml").read_text(encoding="utf-8")
)["command"]

# Commands that do not run as their page says (none): a command here that runs fails the test.
FAILS_TODAY: set[str] = set()  # every documented command runs here

# Options whose values the data file may change from the page's: paths, and lengths made tiny.
SWAPPED = {
    "--dit",
    "--vae",
    "--text_encoder1",
    "--text_encoder2",
    "--dataset_config",
    "--output_dir",
    "--save_path",
    "--lora_weight",
    "--input",
    "--output",
    "--save_merged_model",
    "--sample_prompts",
    "--max_train_epochs",
    "--video_size",
    "--infer_steps",
}

ONE_IMAGE_TOML = """[general]
resolution = [128, 128]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true

[[datasets]]
image_directory = "one/data"
cache_directory = "{cache}"
num_repeats = 1
"""


def _options(tokens: list[str]) -> dict[str, list[str]]:
    """{flag: its values} of a command line's tokens (after the script)."""
    found: dict[str, list[str]] = {}
    flag = None
    for token in tokens:
        if token.startswith("--"):
            flag = token
            found[flag] = []
        elif flag is not None and token != "...":
            found[flag].append(token)
    return found


def _split(original: str) -> tuple[list[str], list[str]]:
    """The page's command line as (the tokens before the script, the script's options)."""
    lines = [line for line in original.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]
    tokens = shlex.split(" ".join(lines))
    scripts = [i for i, t in enumerate(tokens) if t.endswith(".py")]
    start = scripts[0] + 1 if scripts else 0
    return tokens[:start], tokens[start:]


def _original_options(original: str) -> dict[str, list[str]]:
    return _options(_split(original)[1])


def _launcher_environment(original: str) -> dict[str, str]:
    """What `accelerate launch --mixed_precision X` tells the training process (its other flags, such as
    --num_cpu_threads_per_process, do not change what a run computes)."""
    before, _ = _split(original)
    if before[:2] != ["accelerate", "launch"] or "--mixed_precision" not in before:
        return {}
    return {"ACCELERATE_MIXED_PRECISION": before[before.index("--mixed_precision") + 1]}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c["id"])
def test_the_data_keeps_every_option_of_the_page(command):
    theirs = _original_options(command["original"])
    ours = _options(command["argv"])
    assert set(theirs) <= set(ours), f"options of the page left out: {set(theirs) - set(ours)}"
    changed = {flag for flag, values in theirs.items() if values and ours[flag] != values}
    assert changed <= SWAPPED, f"only paths and lengths change: {changed - SWAPPED}"
    assert command["expect"] == "ok" or command["expect"].startswith("needs: ") and command["error"]
    assert (ROOT / command["script"]).is_file()


def test_an_accelerate_launch_line_passes_its_mixed_precision_on():
    launched = next(c for c in COMMANDS if c["id"] == "loraplus")
    assert _launcher_environment(launched["original"]) == {"ACCELERATE_MIXED_PRECISION": "bf16"}
    assert _launcher_environment("python src/musubi_tuner/merge_lora.py --dit x") == {}


def test_fails_today_names_only_commands_of_the_data():
    ids = [c["id"] for c in COMMANDS]
    assert len(ids) == len(set(ids)) and set(ids) >= FAILS_TODAY


def test_the_outcome_check_reads_exit_code_output_and_metadata(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"), metadata={"ss_learning_rate": "0.0002"})
    ok = {"writes": "x.safetensors", "metadata": {"ss_learning_rate": "0.0002"}}
    assert _problem(ok, 0, "", tmp_path) is None
    assert "nothing matches" in str(_problem({**ok, "writes": "y.*"}, 0, "", tmp_path))
    assert "expected" in str(_problem({**ok, "metadata": {"ss_learning_rate": "1"}}, 0, "", tmp_path))
    assert "exit 2" in str(_problem(ok, 2, "error: no\n", tmp_path))
    needs = {"writes": "y.*", "needs_module": "no_such_module_here", "error": "needs no_such_module_here"}
    assert (
        _problem(needs, 2, "INFO x\nerror: --x needs no_such_module_here: pip install it\n", tmp_path) is None
    )
    assert _problem(needs, 0, "", tmp_path) is not None
    assert _problem({**needs, "writes": "x.*"}, 2, "error: needs no_such_module_here\n", tmp_path) is not None


@pytest.fixture(scope="module")
def doc_lora(cached_demo, tmp_path_factory) -> Path:
    """A LoRA of the tiny DiT with non-zero weights, for the commands that read one."""
    from lora_file_testing import trained_network

    from hunyuan_model.checkpoint import load_dit
    from lora_files.io import save_network

    path = tmp_path_factory.mktemp("doc_lora") / "lora.safetensors"
    save_network(trained_network(load_dit(cached_demo / "models" / "tiny_dit.safetensors")), str(path))
    return path


def _work_folder(folder: Path, cached_demo: Path, lora: Path, command: dict[str, Any]) -> Path:
    for name in ("models", "demo"):
        (folder / name).symlink_to(cached_demo / name, target_is_directory=True)
    one = folder / "one"
    (one / "data").mkdir(parents=True)
    (one / "cache").mkdir()
    for name in ("checker.png", "checker.txt"):
        shutil.copy(cached_demo / "demo" / "data" / "images" / name, one / "data" / name)
    for cache in (cached_demo / "demo" / "cache" / "images").glob("checker_*"):
        shutil.copy(cache, one / "cache" / cache.name)
    (one / "dataset.toml").write_text(ONE_IMAGE_TOML.format(cache="one/cache"), encoding="utf-8")
    (one / "fresh.toml").write_text(ONE_IMAGE_TOML.format(cache="out/cache"), encoding="utf-8")
    shutil.copy(lora, folder / "lora.safetensors")
    for name, text in command.get("files", {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _heavy_and_not_asked(command: dict[str, Any]) -> bool:
    return bool(command.get("heavy")) and os.environ.get("HV_TEST_INDUCTOR") != "1"


def _run(command: dict[str, Any]) -> int:
    """The command's exit code (its `error:` line, if any, is on stderr)."""
    argv = list(command["argv"])
    try:
        if _heavy_and_not_asked(command):  # its options only: compiling takes minutes on a CPU
            from training.args import parse_args

            parse_args(argv)
            return 0
        main = importlib.import_module(command["script"].removesuffix(".py")).main
        return int(main(argv))
    except SystemExit as e:  # argparse: one line, exit 2
        return int(e.code or 0)
    except Exception as e:  # a config error raised past the parser
        from hv_common.errors import UserError

        if not isinstance(e, UserError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _problem(command: dict[str, Any], code: int, stderr: str, folder: Path) -> str | None:
    """What differs from the expected outcome, or None."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    written = sorted(folder.glob(command["writes"]))
    module = command.get("needs_module")
    if module is not None and importlib.util.find_spec(module) is None:
        if code == 2 and len(errors) == 1 and command["error"] in errors[0] and not written:
            return None
        return (
            f"expected exit 2 and one line with {command['error']!r}, nothing written; got {code}: {errors}"
        )
    if code != 0:
        return f"exit {code}: {errors or stderr[-2000:]}"
    if _heavy_and_not_asked(command):
        return None
    if not written:
        return f"exit 0 but nothing matches {command['writes']}"
    expected = command.get("metadata", {})
    if expected:
        from safetensors import safe_open

        with safe_open(str(written[0]), "pt") as f:
            header = f.metadata() or {}
        recorded = {key: header.get(key) for key in expected}
        if recorded != expected:
            return f"{written[0].name} records {recorded}, expected {expected}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c["id"])
def test_the_documented_command_runs(
    command, cached_demo, doc_lora, tmp_path, monkeypatch, capsys, restore_logging
):
    from accelerate.state import AcceleratorState

    folder = _work_folder(tmp_path, cached_demo, doc_lora, command)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for name, value in _launcher_environment(command["original"]).items():
        monkeypatch.setenv(name, value)
    # accelerate keeps one state per process, fixed by its first Accelerator: each command starts as a new process
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        code = _run(command)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    problem = _problem(command, code, capsys.readouterr().err, folder)
    print(f"{command['id']}: {problem or 'as expected'}")  # shown when the test fails
    if command["id"] in FAILS_TODAY:
        assert problem is not None, f"{command['id']} runs as its page says now: remove it from FAILS_TODAY"
    else:
        assert problem is None, f"{command['id']} ({command['source']}): {problem}"
