"""The shared CLI wrapper: user errors are one line and exit 2; a bad option costs no torch import."""

import subprocess
import sys
from pathlib import Path

from hv_common.cli import run_command
from hv_common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_error_type_is_a_user_error():
    # run_command catches UserError: each package's error type must derive from it (one base).
    from dataset.cache_format import CacheFileError
    from dataset.errors import DatasetConfigError, MediaError
    from hunyuan_model.attention import AttentionBackendError
    from hunyuan_model.errors import CheckpointError
    from lora_files.errors import LoRAFileError
    from networks.network_args import NetworkArgsError

    kinds = (
        CacheFileError,
        DatasetConfigError,
        MediaError,
        AttentionBackendError,
        CheckpointError,
        LoRAFileError,
        NetworkArgsError,
    )
    assert all(issubclass(t, UserError) for t in kinds)


def test_user_error_is_one_line_and_other_errors_propagate(capsys):
    def bad(_argv):
        raise UserError("something\nthe user can fix")

    assert run_command(bad, []) == 2
    assert capsys.readouterr().err == "error: something the user can fix\n"

    def bug(_argv):
        raise ValueError("a bug, not a user error")

    try:
        run_command(bug, [])
    except ValueError as e:
        assert "a bug" in str(e)
    else:
        raise AssertionError("a programming error was swallowed")


def test_bad_option_does_not_import_torch():
    code = (
        "import sys, runpy; sys.argv = ['hv_train_network.py', '--network_dim', '0'];"
        "sys.path.insert(0, '.');\n"
        "try:\n    runpy.run_path('hv_train_network.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False"], out.stderr


def test_a_huge_message_stays_one_screen(capsys):
    """A hostile file can put megabytes into a message (a key name, a value): the line is cut, and says so."""

    def huge(_argv):
        raise UserError("bad key " + "k" * 1_000_000)

    assert run_command(huge, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: bad key kkk")
    assert len(err) <= 2010 and "(1000008 characters)" in err
