"""convert_lora.py on bad input: an unknown layout names the key, a missing or torn file is one line, nothing written."""

from __future__ import annotations

from lora_file_testing import foreign_lora as _foreign_lora
from lora_file_testing import one_error_line as _one_error_line

import convert_lora


def test_convert_rejects_an_unknown_layout_naming_the_key(tmp_path, capsys):
    src, out = tmp_path / "sdxl.safetensors", tmp_path / "out.safetensors"
    _foreign_lora(src)
    assert convert_lora.main(["--input", str(src), "--output", str(out), "--target", "other"]) == 2
    line = _one_error_line(capsys)
    assert (
        "unknown LoRA layout" in line
        and "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in line
    )
    assert (
        convert_lora.main(
            ["--input", str(tmp_path / "nope.safetensors"), "--output", str(out), "--target", "other"]
        )
        == 2
    )
    assert "not found" in _one_error_line(capsys)
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert (
        convert_lora.main(
            ["--input", str(tmp_path / "torn.safetensors"), "--output", str(out), "--target", "other"]
        )
        == 2
    )
    assert "cannot read LoRA file" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sdxl.safetensors", "torn.safetensors"]
