"""`hv_train_network.py --list_lora_targets [table|json]`: the selection, checked before a run; user errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hv_train_network
from hunyuan_model.tiny import write_tiny_dit

ROOT = Path(__file__).resolve().parents[2]
SINGLE_10_ON = r"include_patterns=[r'.*single_blocks\.\d{2}\.linear.*']"


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging):
    """Every test here runs main(), which sets up logging: the shared fixture puts it back."""


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = hv_train_network.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(capsys, *argv: str) -> dict:
    code, out, err = run_main(capsys, "--list_lora_targets", "json", *argv)
    assert code == 0, err
    return json.loads(out)


def run_script(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "hv_train_network.py"), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def assert_user_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    # warnings may come before it (a pattern that matches nothing); the error itself is one line
    assert all(not line.startswith("error") for line in lines[:-1])
    for fragment in fragments:
        assert fragment in lines[-1]


# --- the counts of the 720p layout ------------------------------------------------------------------------


def test_json_is_one_object_on_stdout_with_every_field():
    result = run_script("--list_lora_targets", "json", "--network_dim", "32", "--network_alpha", "16")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # the whole of stdout is one JSON object
    assert set(report) == {"modules", "excluded", "param_groups"}
    assert len(report["modules"]) == 240
    assert report["modules"][0] == {
        "name": "double_blocks.0.img_attn_qkv",
        "lora_name": "lora_unet_double_blocks_0_img_attn_qkv",
        "in_features": 3072,
        "out_features": 9216,
        "dim": 32,
        "alpha": 16.0,
        "params": 32 * (3072 + 9216),  # the trainable numbers of this module (LoHa / LoKr count their own)
    }
    assert "double_blocks.0.img_mod.linear" in report["excluded"] and len(report["excluded"]) == 80
    assert report["param_groups"] == [{"lr": 2e-6, "params": 480, "kind": "lora"}]


@pytest.mark.parametrize(
    ("network_args", "count"),
    [
        ((), 240),
        (("exclude_patterns=[r'.*single_blocks.*']",), 160),
        (("exclude_patterns=[r'.*']", SINGLE_10_ON), 60),
        (("exclude_patterns=[r'.*']", r"include_patterns=[r'.*modulation.*', r'.*_mod\.linear']"), 80),
        (("exclude_patterns=['single_blocks']",), 240),  # partial: matches nothing (warned)
    ],
)
def test_module_counts(capsys, network_args, count):
    args = ("--network_args", *network_args) if network_args else ()
    assert len(listing(capsys, *args)["modules"]) == count


def test_loraplus_groups(capsys):
    report = listing(capsys, "--learning_rate", "1e-4", "--network_args", "loraplus_lr_ratio=4")
    assert report["param_groups"] == [
        {"lr": 1e-4, "params": 240, "kind": "lora"},
        {"lr": 4e-4, "params": 240, "kind": "lora_plus"},
    ]


def test_rank_patterns_show_in_the_listing(capsys):
    report = listing(capsys, "--network_dim", "16", "--network_args", "rank_patterns={r'.*linear1': 4}")
    dims = {m["name"]: m["dim"] for m in report["modules"]}
    assert (dims["single_blocks.5.linear1"], dims["single_blocks.5.linear2"]) == (4, 16)


def test_logs_go_to_stderr_and_json_stays_clean(capsys):
    code, out, err = run_main(
        capsys, "--list_lora_targets", "json", "--network_args", "verbose=True", "exclude_patterns=['nope']"
    )
    assert code == 0
    json.loads(out)
    assert "'nope'" in err and "lora double_blocks.0.img_attn_qkv" in err


def test_table_is_a_readable_summary(capsys):
    code, out, _ = run_main(capsys, "--list_lora_targets", "--network_args", "loraplus_lr_ratio=2")
    assert code == 0
    assert out.startswith("LoRA targets: 240 modules wrapped, 80 excluded")
    assert "single_blocks.39.linear2" in out
    assert "double_blocks.0.img_mod.linear" in out and ".*(img_mod|txt_mod|modulation).*" in out
    assert "lora_plus  lr=4e-06  240 tensors" in out


def test_with_dit_the_architecture_comes_from_the_checkpoint(capsys, tmp_path):
    dit = write_tiny_dit(tmp_path)
    report = listing(capsys, "--dit", str(dit), "--network_dim", "8")
    assert len(report["modules"]) == 20  # tiny: 2 double blocks x 8 + 2 single blocks x 2
    assert {m["in_features"] for m in report["modules"]} >= {64}
    assert "double_blocks.1.txt_mlp.fc2" in {m["name"] for m in report["modules"]}


# --- user errors: exit 2, one line, no traceback ------------------------------------------------------------

MALFORMED = [
    (("--network_args", "loraplus_ratio=4"), ["loraplus_ratio", "did you mean loraplus_lr_ratio?"]),
    (("--network_args", "verbose"), ["'verbose'", "missing '='"]),
    (("--network_args", "=4"), ["empty key"]),
    (("--network_args", "loraplus_lr_ratio=-1"), ["loraplus_lr_ratio=-1", "a number > 0"]),
    (("--network_args", "exclude_patterns='.*'"), ["exclude_patterns", "a list of strings"]),
    (("--network_args", "verbose='yes'"), ["verbose='yes'", "True or False"]),
    (("--network_args", "rank_patterns=[8]"), ["rank_patterns=[8]", "a dict of regex -> number"]),
    (("--network_args", "verbose=true"), ["did you mean verbose=True?"]),
    (("--network_args", "exclude_patterns=['(']"), ["exclude_patterns", "invalid regex", "missing )"]),
    (("--network_args", "exclude_patterns=[r'.*']"), ["wraps no module"]),
    (("--network_dim", "0"), ["--network_dim", "an integer > 0"]),
    (("--network_alpha", "x"), ["--network_alpha", "a number > 0"]),
    (("--network_d", "8"), ["unrecognized arguments: --network_d"]),
    (("--network_module", "networks.nope"), ["--network_module networks.nope", "cannot import"]),
    (("--dit", "/nonexistent/dit.safetensors"), ["--dit", "no such file"]),
]


@pytest.mark.parametrize(("argv", "fragments"), MALFORMED, ids=[" ".join(m[0]) for m in MALFORMED])
def test_user_errors_in_process(capsys, argv, fragments):
    try:
        code = hv_train_network.main(["--list_lora_targets", "json", *argv])
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    captured = capsys.readouterr()
    assert_user_error(code, captured.out, captured.err, *fragments)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--network_args", "loraplus_ratio=4"), "did you mean loraplus_lr_ratio?"),
        (("--network_args", "exclude_patterns=[r'.*']"), "wraps no module"),
        (("--network_dim", "-3"), "an integer > 0"),
    ],
)
def test_user_errors_from_the_script(argv, fragment):
    result = run_script("--list_lora_targets", "json", *argv)
    assert_user_error(result.returncode, result.stdout, result.stderr, fragment)


def test_a_file_that_is_no_dit_is_a_one_line_error(tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    result = run_script("--list_lora_targets", "json", "--dit", str(bogus))
    assert_user_error(result.returncode, result.stdout, result.stderr, "bogus.safetensors")
