"""Shared by tests/dataset/test_config.py and test_config_errors.py: a dataset TOML written into a folder (the
media it names: the `media` fixture in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def write_config(root: Path, text: str, name: str = "dataset.toml") -> Path:
    path = root / name
    path.write_text(text, encoding="utf-8")
    return path
