"""Hostile input through the real commands: every bad file or value is one `error:` line naming it, exit code 2,
no traceback, nothing executed and nothing written. The corpus is built here in tmp_path (no binary files in git).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cache_latents
import convert_lora
import hv_generate_video
import hv_train_network
import merge_lora
from hunyuan_model.tiny import tiny_dit_state_dict, write_tiny_dit

pytestmark = pytest.mark.usefixtures("restore_logging")

LORA_KEY = "lora_unet_double_blocks_0_img_attn_proj"
ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")


def _refused(capsys, code: int, *fragments: str, logs: bool = False) -> str:
    """Exit 2 and exactly one stderr line, `error: ...`, holding every fragment; nothing on stdout.

    logs: the command logs its progress (log lines, progress bars) before it meets the bad input; then only the
    `error:` lines are counted.
    """
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    if logs:
        lines = [line for line in lines if line.startswith("error:")]
    assert code == 2, err
    assert out == "" and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: ") and len(lines[0]) < 1000, lines[0][:300]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---------------------------------------------------------------- safetensors with lying headers, torn files


def _raw_safetensors(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


def _tensor(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def broken_safetensors(folder: Path, name: str = "w") -> dict[str, tuple[Path, str]]:
    """case -> (a file that no safetensors reader may accept, a fragment of the error)."""
    folder.mkdir(parents=True, exist_ok=True)
    f32 = _tensor("F32", [2], 0, 8)
    cases = {
        "header longer than the file": (
            _raw_safetensors(folder / "long.safetensors", {name: f32}, b"\0" * 8, 10**6),
            "invalid header length",
        ),
        "header length 2**63": (
            _raw_safetensors(folder / "huge.safetensors", {}, b"", 2**63),
            "header too large",
        ),
        "offsets past the end": (
            _raw_safetensors(folder / "past.safetensors", {name: f32}, b"\0" * 4),
            "not fully covered",
        ),
        "overlapping offsets": (
            _raw_safetensors(
                folder / "overlap.safetensors", {name: f32, "x": _tensor("F32", [2], 4, 12)}, b"\0" * 12
            ),
            "invalid offset",
        ),
        "unknown dtype": (
            _raw_safetensors(folder / "dtype.safetensors", {name: _tensor("F33", [2], 0, 8)}, b"\0" * 8),
            "F33",
        ),
        "shape vs byte range": (
            _raw_safetensors(folder / "shape.safetensors", {name: _tensor("F32", [3], 0, 8)}, b"\0" * 8),
            "invalid shape",
        ),
        "2**80 elements": (
            _raw_safetensors(
                folder / "big.safetensors", {name: _tensor("F32", [2**40, 2**40], 0, 8)}, b"\0" * 8
            ),
            "overflow",
        ),
        "header is a list": (_raw_safetensors(folder / "list.safetensors", [1, 2]), "invalid JSON"),
        "zero bytes": ((folder / "zero.safetensors"), "header too small"),
        "truncated": ((folder / "torn.safetensors"), "safetensors"),
    }
    (folder / "zero.safetensors").write_bytes(b"")
    good = folder / "good.safetensors"
    save_file({name: torch.ones(64, 64)}, str(good))
    (folder / "torn.safetensors").write_bytes(good.read_bytes()[:-100])
    return cases


# ---------------------------------------------------------------- LoRA files


def _lora(path: Path, **over: torch.Tensor) -> Path:
    sd = {
        f"{LORA_KEY}.lora_down.weight": torch.randn(4, 64) * 0.01,
        f"{LORA_KEY}.lora_up.weight": torch.randn(64, 4) * 0.01,
        f"{LORA_KEY}.alpha": torch.tensor(2.0),
    }
    sd.update({f"{LORA_KEY}.{k.replace('__', '.')}": v for k, v in over.items()})
    save_file(sd, str(path))
    return path


def bad_loras(folder: Path) -> dict[str, tuple[Path, str]]:
    """case -> (a bad LoRA file for the tiny DiT, a fragment of the error)."""
    cases = {name: (path, "cannot read LoRA file") for name, (path, _) in broken_safetensors(folder).items()}
    cases["a directory"] = (folder / "dir.safetensors", "is a directory")
    (folder / "dir.safetensors").mkdir()
    cases["missing"] = (folder / "nope.safetensors", "not found")
    cases["int weights"] = (
        _lora(folder / "int.safetensors", lora_down__weight=torch.ones(4, 64, dtype=torch.int32)),
        f"{LORA_KEY}.lora_down.weight is torch.int32",
    )
    cases["NaN weights"] = (
        _lora(folder / "nan.safetensors", lora_up__weight=torch.full((64, 4), float("nan"))),
        f"{LORA_KEY}.lora_up.weight holds NaN or Inf",
    )
    cases["Inf alpha"] = (
        _lora(folder / "inf.safetensors", alpha=torch.tensor(float("inf"))),
        f"{LORA_KEY}.alpha holds NaN or Inf",
    )
    cases["alpha not one number"] = (
        _lora(folder / "alpha3.safetensors", alpha=torch.ones(3)),
        "must be one number",
    )
    cases["rank 0"] = (
        _lora(
            folder / "rank0.safetensors",
            lora_down__weight=torch.zeros(0, 64),
            lora_up__weight=torch.zeros(64, 0),
        ),
        "is empty",
    )
    for name, config in {
        "regex bomb in alpha_pattern": {"alpha_pattern": {"(.*)*x": 4}},
        "runaway alpha_pattern": {"alpha_pattern": {"(.|.)*Z": 4}},
        "invalid regex in alpha_pattern": {"alpha_pattern": {"(": 4}},
        "text lora_alpha": {"lora_alpha": "abc"},
        "NaN lora_alpha": {"lora_alpha": float("nan")},
    }.items():
        path = folder / f"{name.replace(' ', '_')}.safetensors"
        _diffusers_lora(path, {"lora_adapter_metadata": json.dumps(config)})
        cases[f"PEFT header: {name}"] = (path, "in the header")
    return cases


def _diffusers_lora(path: Path, metadata: dict[str, str]) -> Path:
    """A diffusers-layout LoRA (single block 1's attn.to_q) with a saved PEFT LoraConfig in the header."""
    prefix = "transformer.single_transformer_blocks.1.attn.to_q"
    sd = {f"{prefix}.lora_A.weight": torch.randn(2, 64), f"{prefix}.lora_B.weight": torch.randn(64, 2)}
    save_file(sd, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory) -> Path:
    return write_tiny_dit(tmp_path_factory.mktemp("dit"))


@pytest.fixture(scope="module")
def lora_corpus(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return bad_loras(tmp_path_factory.mktemp("loras"))


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


# ---------------------------------------------------------------- DiT files


class _Payload:
    """Unpickled with weights_only=False, this would run `touch marker`."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def bad_dits(folder: Path) -> dict[str, tuple[Path, str]]:
    cases = {
        name: (path, "not a readable safetensors file")
        for name, (path, _) in broken_safetensors(folder).items()
    }
    _Payload.marker = folder / "pwned"
    torch.save({"module": {"img_in.proj.weight": _Payload()}}, folder / "payload.pt")
    cases["pickle payload (.pt)"] = (folder / "payload.pt", "refusing to load")
    (folder / "plain_pickle.pt").write_bytes(__import__("pickle").dumps({"w": _Payload()}, protocol=4))
    cases["plain pickle (.pt)"] = (folder / "plain_pickle.pt", "weights-only unpickler refused it")
    (folder / "zero.pt").write_bytes(b"")
    cases["zero-byte .pt"] = (folder / "zero.pt", "empty file")
    (folder / "junk.pt").write_bytes(bytes(range(256)) * 8)
    cases["junk .pt"] = (folder / "junk.pt", "not a readable PyTorch checkpoint")
    (folder / "dit_dir.safetensors").mkdir()
    cases["empty directory"] = (folder / "dit_dir.safetensors", "folder holds no .safetensors file")
    sd = tiny_dit_state_dict()
    save_file(
        {**sd, "img_in.proj.weight": sd["img_in.proj.weight"].to(torch.int32)},
        str(folder / "int.safetensors"),
    )
    cases["int weights"] = (folder / "int.safetensors", "'img_in.proj.weight': torch.int32")
    nan = sd["double_blocks.0.img_attn_proj.weight"].clone()
    nan[0, 0] = float("nan")
    save_file({**sd, "double_blocks.0.img_attn_proj.weight": nan}, str(folder / "nan.safetensors"))
    cases["NaN weight"] = (
        folder / "nan.safetensors",
        "'double_blocks.0.img_attn_proj.weight' holds NaN or Inf",
    )
    return cases


@pytest.fixture(scope="module")
def dit_corpus(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return bad_dits(tmp_path_factory.mktemp("dits"))


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


# ---------------------------------------------------------------- --network_args

NETWORK_ARGS = {
    "code injection": ("verbose=__import__('os').system('touch {marker}')", "not a Python literal"),
    "call in a list": ("exclude_patterns=[open('{marker}', 'w')]", "not a Python literal"),
    "huge number": ("loraplus_lr_ratio=" + "9" * 5000, "not a Python literal"),
    "power tower": ("loraplus_lr_ratio=9**9**9", "not a Python literal"),
    "1e999": ("loraplus_lr_ratio=1e999", "expected a number > 0"),
    "deep nesting": ("exclude_patterns=" + "[" * 30_000 + "]" * 30_000, "not a Python literal"),
    "10 MB item": ("exclude_patterns=['" + "a" * 10_000_000 + "']", "too long"),
    "regex bomb": ("exclude_patterns=[r'(.*)*x']", "repeats a group that itself repeats"),
    "nested bomb": ("rank_patterns={r'(\\w+\\.?)+$': 4}", "repeats a group that itself repeats"),
    "invalid regex": ("include_patterns=[r'(']", "invalid regex"),
    "huge repeat count": ("exclude_patterns=[r'a{99999999999}']", "invalid regex"),
    "nested repeat in a conditional": (
        "exclude_patterns=[r'(x)?(?(1)a|(.*)*Z)']",
        "repeats a group that itself repeats",
    ),
    "10,000 patterns": (
        "exclude_patterns=[" + ", ".join(f"'m{i}'" for i in range(10_000)) + "]",
        "at most 1000",
    ),
    "unicode key": ("vérbose=True", "unknown key"),
    "right-to-left override": ("verbose=\u202eTrue", "not a Python literal"),
}


@pytest.mark.parametrize("case", list(NETWORK_ARGS), ids=list(NETWORK_ARGS))
def test_network_args_hostile_values(case, tmp_path, capsys):
    marker = tmp_path / "pwned"
    item, fragment = NETWORK_ARGS[case]
    item = item.replace("{marker}", str(marker))
    code = hv_train_network.main(
        ["--list_lora_targets", "json", "--network_dim", "4", "--network_args", item]
    )
    _refused(capsys, code, "network_args", fragment)
    assert not marker.exists()


# Patterns that parse but make `re` backtrack for hours on a module name: the guard meets them with the names
# (networks/pattern_guard.py). Each test runs a real process; its timeout is a safety net against a hang.
RUNAWAY_PATTERNS = {
    "(.|.)*Z": ("exclude_patterns=[r'(.|.)*Z']", "did not finish matching"),
    "twenty .* then Z": ("rank_patterns={r'" + ".*" * 20 + "Z': 4}", "did not finish matching"),
    "nested repeat in a conditional": (
        "include_patterns=[r'(x)?(?(1)a|(.*)*Z)']",
        "repeats a group that itself",
    ),
}


def _run_trainer(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "hv_train_network.py"), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def _refused_process(proc: subprocess.CompletedProcess, *fragments: str, logs: bool = False) -> str:
    lines = proc.stderr.strip().splitlines()
    if logs:
        lines = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 1000, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(RUNAWAY_PATTERNS), ids=list(RUNAWAY_PATTERNS))
def test_runaway_pattern_on_the_command_line(case):
    item, fragment = RUNAWAY_PATTERNS[case]
    proc = _run_trainer(["--list_lora_targets", "json", "--network_args", item])
    _refused_process(proc, "network_args", fragment)


def test_runaway_pattern_in_a_config_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('network_args = ["exclude_patterns=[r\'(.|.)*Z\']", "verbose=True"]\n')
    proc = _run_trainer(["--list_lora_targets", "--config_file", str(config)])
    _refused_process(proc, "exclude_patterns", "'(.|.)*Z' did not finish matching")


def test_runaway_pattern_stops_training_before_the_model_loads(cached_demo, dit_corpus, tmp_path):
    """The DiT has NaN weights, which loading it would report: the pattern is refused first (from headers)."""
    out = tmp_path / "out"
    nan_dit, _ = dit_corpus["NaN weight"]
    argv = [
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
        "--dit",
        str(nan_dit),
        "--network_args",
        RUNAWAY_PATTERNS["(.|.)*Z"][0],
    ]
    _refused_process(_run_trainer(argv, cwd=cached_demo), "did not finish matching", logs=True)
    assert not out.exists()


# ---------------------------------------------------------------- tracebacks that are one line now


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1", "9" * 5000])
def test_huge_seed_on_the_command_line(seed, capsys):
    with pytest.raises(SystemExit) as info:
        hv_train_network.main(["--list_lora_targets", "json", "--seed", seed])
    assert info.value.code == 2
    _refused(capsys, 2, "--seed", "expected an integer >= 0 and <= 2**64 - 1")


def test_huge_seed_for_generation(capsys):
    with pytest.raises(SystemExit) as info:
        hv_generate_video.main(["--seed", "18446744073709551616", "--prompt", "x"])
    assert info.value.code == 2
    _refused(capsys, 2, "--seed", "expected an integer >= 0 and <= 2**64 - 1")


def test_largest_seed_is_accepted():
    from training.args import parse_args

    assert parse_args(["--seed", str(2**64 - 1)]).training.seed == 2**64 - 1


def test_output_dir_that_is_a_file_is_refused_before_the_model_loads(
    cached_demo, dit_corpus, tmp_path, monkeypatch, capsys
):
    """With a NaN DiT, which loading would report: the output folder is refused first."""
    monkeypatch.chdir(cached_demo)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    nan_dit, _ = dit_corpus["NaN weight"]
    for out, fragment in [(taken, "is a file, not a folder"), (taken / "sub", "is inside")]:
        argv = [
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
            "--dit",
            str(nan_dit),
        ]
        _refused(capsys, hv_train_network.main(argv), "--output_dir", fragment, logs=True)
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("mode", ["json", "table"])
def test_closed_stdout_ends_quietly(mode):
    """`--list_lora_targets json | head -c 10` when head has gone: no traceback, the SIGPIPE exit code."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails (EPIPE)
    try:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "hv_train_network.py"), "--list_lora_targets", mode],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=900,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr[-2000:]


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


# ---------------------------------------------------------------- --config_file TOML

CONFIG_TOML: dict[str, tuple[str | bytes, str]] = {
    "syntax error": ("[optimizer\nlearning_rate = 1\n", "TOML syntax error"),
    "parser IndexError": ("T .", "TOML syntax error"),
    "deep array": ("a = " + "[" * 3000 + "]" * 3000, "TOML syntax error"),
    "unknown option": ("learnig_rate = 1e-4\n", "did you mean learning_rate?"),
    "10 MB key": ("x" * 10_000_000 + " = 1\n", "too large"),
    "long key": ("x" * 100_000 + " = 1\n", "characters)"),
    "wrong type": ('learning_rate = "abc"\n', "learning_rate: expected a number > 0"),
    "float for an int": ("max_train_steps = 1.5\n", "max_train_steps"),
    "bool for an int": ("max_train_steps = true\n", "max_train_steps"),
    "NaN": ("learning_rate = nan\n", "learning_rate"),
    "a list for a scalar": ("learning_rate = [1]\n", "expected a single value"),
    "network_args as a string": ('network_args = "verbose=True"\n', "expected a list"),
    "network_args injection": (
        "network_args = [\"verbose=__import__('os').system('touch {marker}')\"]\n",
        "not a Python literal",
    ),
    "nested sections": ("[a.b]\nc = 1\n", "sections nest one level only"),
    "huge seed": ("seed = 18446744073709551616\n", "seed: expected an integer >= 0 and <= 2**64 - 1"),
    "non-UTF-8": (b'output_dir = "\xff"\n', "cannot read the config file"),
}


@pytest.mark.parametrize("case", list(CONFIG_TOML), ids=list(CONFIG_TOML))
def test_config_toml_hostile(case, tmp_path, capsys):
    marker = tmp_path / "pwned"
    body, fragment = CONFIG_TOML[case]
    path = tmp_path / "config.toml"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body.replace("{marker}", str(marker)))
    code = hv_train_network.main(["--list_lora_targets", "json", "--config_file", str(path)])
    _refused(capsys, code, fragment)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("nope.toml", "no such file"), ("x" * 5000, "cannot use it"), ("a_dir", "no such file")],
    ids=["missing", "name too long", "a directory"],
)
def test_config_file_that_cannot_be_opened(name, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_dir").mkdir()
    _refused(capsys, hv_train_network.main(["--config_file", name]), "--config_file", fragment)


# ---------------------------------------------------------------- --sample_prompts files

PROMPTS: dict[str, tuple[str | bytes, str]] = {
    "p.txt bad flag": ("a cat --w abc\n", "--w 'abc': expected a width"),
    "p.txt huge number": ("a cat --w 99999999999999999999999\n", "expected a width"),
    "p.txt 5000 digits": ("a cat --d " + "9" * 5000 + "\n", "characters)"),
    "p.txt 1e999": ("a cat --g 1e999\n", "--g"),
    "p.txt unknown flag": ("a cat --zz 3\n", "unknown option --zz"),
    "p.txt binary junk": (bytes(range(256)) * 20, "cannot read it"),
    "p.json deep nesting": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "p.json 5000-digit seed": ('[{"prompt": "a", "seed": ' + "9" * 5000 + "}]", "not valid JSON"),
    "p.json inf width": ('[{"prompt": "a", "width": 1e999}]', "'width' inf"),
    "p.toml parser IndexError": ("T .", "not valid TOML"),
    "p.toml deep array": ("prompt = " + "[" * 3000 + "]" * 3000, "not valid TOML"),
    "p.toml prompt not a string": ("[[prompt]]\nprompt = 3\n", "needs a 'prompt' string"),
}


@pytest.mark.parametrize("case", list(PROMPTS), ids=list(PROMPTS))
def test_prompt_file_hostile(case, tmp_path):
    """The parser the trainer and the sampler share, on each file (the trainer itself: test below)."""
    from generation.prompts import load_prompts
    from hv_common.errors import UserError

    body, fragment = PROMPTS[case]
    path = tmp_path / case.split()[0]
    (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message and len(message) < 1000, message[:300]


def test_trainer_refuses_a_bad_prompt_file_before_writing(cached_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    for name in ("p.txt bad flag", "p.json deep nesting"):
        body, fragment = PROMPTS[name]
        prompts = tmp_path / name.split()[0]
        prompts.write_text(body)
        argv = [
            "--config_file",
            DEMO_TOML,
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            str(out),
            "--sample_prompts",
            str(prompts),
            "--vae",
            "models/vae",
            "--text_encoder1",
            "models/text_encoder",
            "--text_encoder2",
            "models/text_encoder_2",
            "--max_train_steps",
            "1",
        ]
        _refused(capsys, hv_train_network.main(argv), fragment, logs=True)
    assert not out.exists()  # not even an empty output folder
