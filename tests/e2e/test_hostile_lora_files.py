"""Hostile LoRA files through convert_lora.py, merge_lora.py and hv_generate_video.py: each bad file is one
`error:` line naming it, exit code 2, no traceback, nothing written.
"""

from __future__ import annotations

import pytest
from hostile_files import files_under as _files_under
from hostile_files import refused as _refused

import convert_lora
import hv_generate_video
import merge_lora

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_convert_lora_refuses_each_bad_lora(lora_corpus, tmp_path, capsys):
    out = tmp_path / "out" / "converted.safetensors"
    out.parent.mkdir()
    for path, fragment in lora_corpus.values():
        code = convert_lora.main(["--input", str(path), "--output", str(out), "--target", "other"])
        _refused(capsys, code, fragment, path.name)
    assert _files_under(out.parent) == []


def test_merge_lora_refuses_each_bad_lora(lora_corpus, tiny_dit, tmp_path, capsys):
    out = tmp_path / "out" / "merged.safetensors"
    for path, fragment in lora_corpus.values():
        argv = ["--dit", str(tiny_dit), "--lora_weight", str(path), "--save_merged_model", str(out)]
        _refused(capsys, merge_lora.main(argv), fragment)
    assert _files_under(out.parent) == []


def test_generate_refuses_each_bad_lora_before_any_model_loads(lora_corpus, tiny_dit, tmp_path, capsys):
    save = tmp_path / "videos"
    for path, fragment in lora_corpus.values():
        argv = [
            "--dit",
            str(tiny_dit),
            "--prompt",
            "a cat",
            "--text_encoder1",
            str(tmp_path),
            "--text_encoder2",
            str(tmp_path),
            "--output_type",
            "latent",
            "--save_path",
            str(save),
            "--video_size",
            "64",
            "64",
            "--video_length",
            "5",
            "--infer_steps",
            "1",
            "--lora_weight",
            str(path),
        ]
        _refused(capsys, hv_generate_video.main(argv), fragment)
    assert _files_under(save) == []
