"""The step/epoch names (hv_common/labels.py): the exact names on disk that users' resume folders and
musubi-tuner's naming depend on, and every reader of a name (pruning, --resume auto, the report, the previews'
parser) reading back what the writer wrote."""

from __future__ import annotations

from pathlib import Path

from hv_common.labels import (
    FINAL_LABEL,
    epoch_label,
    label_for,
    label_text,
    lora_file_name,
    preview_pattern,
    preview_stem,
    saved_pattern,
    state_folder_name,
    state_folder_pattern,
    step_label,
)
from run_report.preview_media import parse_preview
from training.saving import prune, state_folders


def test_names_on_disk_are_musubi_tuners():
    assert lora_file_name("x", step=10) == "x-step00000010.safetensors"
    assert lora_file_name("x", epoch=2) == "x-000002.safetensors"
    assert lora_file_name("x") == "x.safetensors"
    assert state_folder_name("x", "step", 10) == "x-step00000010-state"
    assert state_folder_name("x", "epoch", 2) == "x-000002-state"
    assert (step_label(0), epoch_label(2)) == ("step00000000", "000002")
    assert (label_for("step", 60), label_for("epoch", 3)) == ("step00000060", "000003")
    assert preview_stem("x", step_label(60), 1, 42) == "x_step00000060_01_42"
    assert preview_stem(None, FINAL_LABEL, 12, -1) == "final_12_-1"


def test_the_readers_read_what_the_writer_wrote():
    for kind, count in (("step", 1), ("step", 12_345_678), ("epoch", 2), ("epoch", 999_999)):
        lora = lora_file_name("x", **{kind: count})
        state = state_folder_name("x", kind, count)
        assert int(saved_pattern("x", kind).match(lora)[1]) == count
        assert int(saved_pattern("x", kind, state=True).match(state)[1]) == count
        assert state_folder_pattern("x").match(state)
        assert not state_folder_pattern("x").match(f"x_v2{state[1:]}")  # another run's
        assert not state_folder_pattern("x").match(f".{state}.a.tmp")
        assert label_text(label_for(kind, count)) == f"{kind} {count}"
        match = preview_pattern("x").match(preview_stem("x", label_for(kind, count), 3, 7) + ".mp4")
        assert (match["label"], match["index"], match["seed"]) == (label_for(kind, count), "03", "7")
    assert label_text(FINAL_LABEL) == "final"
    assert not saved_pattern("x", "step").match("x-000002.safetensors")
    assert not saved_pattern("x", "epoch").match("x-step00000002.safetensors")


def test_pruning_and_resume_find_the_trainers_names(tmp_path: Path):
    for step in (2, 4, 6):
        (tmp_path / lora_file_name("run", step=step)).write_bytes(b"")
        (tmp_path / state_folder_name("run", "step", step)).mkdir()
    (tmp_path / state_folder_name("run", "epoch", 1)).mkdir()
    (tmp_path / lora_file_name("run")).write_bytes(b"")
    assert [p.name for p in state_folders(tmp_path, "run")] == [
        "run-000001-state",
        "run-step00000002-state",
        "run-step00000004-state",
        "run-step00000006-state",
    ]
    prune(tmp_path, "run", "step", keep=1)
    prune(tmp_path, "run", "step", keep=2, state=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "run-000001-state",
        "run-step00000004-state",
        "run-step00000006-state",
        "run-step00000006.safetensors",
        "run.safetensors",
    ]
    preview = parse_preview(tmp_path / (preview_stem("run", step_label(6), 0, 5) + ".png"), "run")
    assert preview is not None and (preview.label, preview.index, preview.seed) == ("step00000006", 0, 5)
