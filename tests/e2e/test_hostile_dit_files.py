"""Hostile DiT files (torn safetensors, pickle payloads, int and NaN weights) through merge_lora.py, load_dit,
hv_generate_video.py and hv_train_network.py: one `error:` line, exit code 2, nothing executed or written.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hostile_files import DEMO_TOML, ROOT
from hostile_files import Payload as _Payload
from hostile_files import files_under as _files_under
from hostile_files import lora_file as _lora
from hostile_files import refused as _refused

import hv_generate_video
import hv_train_network
import merge_lora

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_merge_lora_refuses_each_bad_dit_and_runs_no_payload(dit_corpus, tmp_path, capsys):
    lora = _lora(tmp_path / "lora.safetensors")
    out = tmp_path / "out" / "merged.safetensors"
    for name, (path, fragment) in dit_corpus.items():
        if name == "NaN weight":  # merging streams tensors; NaN is checked where a DiT is loaded whole
            continue
        argv = ["--dit", str(path), "--lora_weight", str(lora), "--save_merged_model", str(out)]
        _refused(capsys, merge_lora.main(argv), fragment)
    assert _files_under(out.parent) == []
    assert not _Payload.marker.exists(), "the pickle payload ran"


def test_load_dit_refuses_each_bad_dit(dit_corpus):
    """load_dit (the trainer's and hv_generate_video.py's loader) on every case, NaN weights included."""
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.errors import CheckpointError

    for name, (path, fragment) in dit_corpus.items():
        with pytest.raises(CheckpointError) as info:
            load_dit(path)
        assert fragment in str(info.value) and "\n" not in str(info.value), (name, str(info.value))
    assert not _Payload.marker.exists(), "the pickle payload ran"


def test_generate_refuses_bad_dits(cached_demo, dit_corpus, tmp_path, monkeypatch, capsys):
    """hv_generate_video.py --dit: the prompt is encoded first (tiny encoders), then the DiT is refused."""
    monkeypatch.chdir(cached_demo)
    save = tmp_path / "videos"
    for name in ("NaN weight", "int weights", "pickle payload (.pt)", "shape vs byte range"):
        path, fragment = dit_corpus[name]
        argv = [
            "--dit",
            str(path),
            "--prompt",
            "a cat",
            "--text_encoder1",
            "models/text_encoder",
            "--text_encoder2",
            "models/text_encoder_2",
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
        ]
        _refused(capsys, hv_generate_video.main(argv), fragment, logs=True)
    assert _files_under(save) == []
    assert not _Payload.marker.exists()


def test_trainer_refuses_bad_dit_and_network_weights(
    cached_demo, dit_corpus, lora_corpus, tmp_path, monkeypatch, capsys
):
    """hv_train_network.py --dit / --network_weights: a few of each (every case costs a run setup)."""
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    base = [
        "--config_file",
        DEMO_TOML,
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        "--max_train_steps",
        "1",
    ]
    for name in ("pickle payload (.pt)", "overlapping offsets", "NaN weight", "int weights"):
        path, fragment = dit_corpus[name]
        _refused(capsys, hv_train_network.main([*base, "--dit", str(path)]), fragment, logs=True)
    for name in ("NaN weights", "int weights", "truncated", "a directory"):
        path, fragment = lora_corpus[name]
        argv = [*base, "--dit", "models/tiny_dit.safetensors", "--network_weights", str(path)]
        _refused(capsys, hv_train_network.main(argv), fragment, logs=True)
    assert not out.exists()  # not even an empty output folder
    assert not _Payload.marker.exists()


def test_pickle_payload_in_a_real_process_runs_nothing(dit_corpus, tmp_path):
    path, fragment = dit_corpus["pickle payload (.pt)"]
    out = tmp_path / "merged.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            "merge_lora.py",
            "--dit",
            str(path),
            "--lora_weight",
            str(_lora(tmp_path / "l.safetensors")),
            "--save_merged_model",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr and "Traceback" not in proc.stderr
    assert not _Payload.marker.exists() and not out.exists()
