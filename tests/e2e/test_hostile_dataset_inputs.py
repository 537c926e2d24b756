"""Hostile dataset TOML files through cache_latents.py: one `error:` line naming the file, exit code 2, no
cache written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_files import refused as _refused

import cache_latents

pytestmark = pytest.mark.usefixtures("restore_logging")


# ---------------------------------------------------------------- dataset TOML

_GOOD_DATASET = (
    '[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\n'
    '[[datasets]]\nimage_directory = "img"\ncache_directory = "cache"\n'
)
DATASET_TOML: dict[str, tuple[str | bytes, str]] = {
    "syntax error": ("[general\nresolution = 1\n", "TOML syntax error"),
    "parser IndexError": ("T .", "TOML syntax error"),
    "deep array": ("a = " + "[" * 3000 + "]" * 3000, "TOML syntax error"),
    "deep inline table": ("[general]\nresolution = " + "{a=" * 3000 + "1" + "}" * 3000, "TOML syntax error"),
    "empty file": ("", "no [[datasets]] table"),
    "wrong type": (
        _GOOD_DATASET.replace("[64, 64]", '"big"'),
        "general.resolution: expected [width, height]",
    ),
    "unknown key": (_GOOD_DATASET + "colour = 1\n", "datasets[0].colour: unknown key"),
    "missing directory": (_GOOD_DATASET.replace('"img"', '"nope"'), "image_directory: directory not found"),
    "zero size": (_GOOD_DATASET.replace("[64, 64]", "[0, 64]"), "at least 16"),
    "negative batch": (_GOOD_DATASET + "batch_size = -1\n", "datasets[0].batch_size"),
    "huge resolution": (_GOOD_DATASET.replace("[64, 64]", "[1048576, 64]"), "at most 16384"),
    "huge repeats": (_GOOD_DATASET + "num_repeats = 9223372036854775807\n", "datasets[0].num_repeats"),
    "5000-digit int": (_GOOD_DATASET + "batch_size = " + "9" * 5000 + "\n", "TOML syntax error"),
    "10 MB string": (_GOOD_DATASET.replace('".txt"', '"' + "x" * 10_000_000 + '"'), "too large"),
    "long path": (_GOOD_DATASET.replace('"img"', '"' + "x" * 100_000 + '"'), "at most 4096 characters"),
    "NUL in a path": (_GOOD_DATASET.replace('"img"', '"img\\u0000x"'), "without NUL"),
    "nested tables": ("[" + ".".join(["a"] * 5000) + "]\n", "unknown top-level key"),
    "datasets not tables": ('datasets = "x"\n', "expected [[datasets]] tables"),
    "non-UTF-8": (b'[general]\ncaption_extension = "\xff\xfe"\n', "cannot read the dataset config"),
    "binary junk": (bytes(range(256)) * 20, "cannot read the dataset config"),
}


@pytest.fixture
def image_folder(tmp_path, monkeypatch) -> Path:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "a.txt").write_text("a cat")
    return tmp_path


@pytest.mark.parametrize("case", list(DATASET_TOML), ids=list(DATASET_TOML))
def test_dataset_toml_hostile(case, image_folder, capsys):
    body, fragment = DATASET_TOML[case]
    path = image_folder / "dataset.toml"
    (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
    code = cache_latents.main(["--dataset_config", str(path), "--vae", "no_vae"])
    _refused(capsys, code, "dataset.toml", fragment)
    assert not (image_folder / "cache").exists()
