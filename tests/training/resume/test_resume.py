"""--resume trusts no state: a damaged one or one saved with other options is one line (exit 2) when named with
--resume DIR; --resume auto warns about each damaged state, falls back to an older one and says which it used.

One short run (images only: fast steps) saves the states at steps 1 and 2; every case copies them and resumes."""

import argparse
import shutil
from pathlib import Path

import pytest
import torch

import hv_train_network

ROOT = Path(__file__).resolve().parents[3]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")
STEP1, STEP2 = "tiny_lora-step00000001-state", "tiny_lora-step00000002-state"
IMAGES_TOML = """[general]
resolution = [128, 128]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true
bucket_no_upscale = false
[[datasets]]
image_directory = "demo/data/images"
cache_directory = "demo/cache/images"
num_repeats = 2
"""


def _train(out: Path, *extra: str) -> int:
    images = out.parent / "images.toml"
    images.write_text(IMAGES_TOML)
    argv = [
        "--config_file",
        DEMO_TOML,
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        str(images),
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        "--save_every_n_steps",
        "1",
        "--save_state",
        *extra,
    ]
    return hv_train_network.main(argv)


@pytest.fixture(scope="module")
def states(cached_demo, tmp_path_factory) -> Path:
    """The output folder of a 2-step run with the demo's options: states at steps 1 and 2 (with the run record)."""
    root = tmp_path_factory.mktemp("resume_states")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cached_demo)
        assert _train(root / "out", "--max_train_steps", "2") == 0
    return root / "out"


@pytest.fixture
def out(states, cached_demo, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the two states, in the demo's work folder."""
    monkeypatch.chdir(cached_demo)
    target = tmp_path / "out"
    target.mkdir()
    for name in (STEP1, STEP2):
        shutil.copytree(states / name, target / name)
    return target


def _edit(folder: Path, change) -> None:
    payload = torch.load(folder / "train_state.pt", weights_only=True)
    change(payload)
    torch.save(payload, folder / "train_state.pt")


def _drop_group(payload: dict, record: bool = True) -> None:
    """One param group fewer, consistent everywhere else in the file: only the LoRA and the record can tell."""
    for index in payload["optimizer"]["param_groups"].pop()["params"]:
        payload["optimizer"]["state"].pop(index, None)
    for key in ("base_lrs", "_last_lr", "lr_lambdas"):
        payload["scheduler"][key].pop()
    if not record:
        del payload["run"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "missing key": (lambda f: _edit(f, lambda p: p.pop("scheduler")), "no 'scheduler' in it"),
    "wrong type": (
        lambda f: _edit(f, lambda p: p["progress"].update(step=2.0)),
        "progress.step is 2.0 (float)",
    ),
    "negative step": (lambda f: _edit(f, lambda p: p["progress"].update(step=-5)), "progress.step is -5"),
    "absurd step": (
        lambda f: _edit(f, lambda p: p["progress"].update(step=10**12)),
        "expected an integer from 0",
    ),
    "step not the schedule's": (
        lambda f: _edit(f, lambda p: p["progress"].update(step=7)),
        "lr schedule is at step 2",
    ),
    "a method's name in the scheduler": (
        lambda f: _edit(f, lambda p: p["scheduler"].update(step=3)),
        "scheduler has the key 'step'",
    ),
    "group fewer": (lambda f: _edit(f, _drop_group), "the optimizer state has 1 param group"),
    "group fewer, no record": (
        lambda f: _edit(f, lambda p: _drop_group(p, record=False)),
        "covers 20 tensors",
    ),
    "torn state file": (lambda f: _truncate(f / "train_state.pt"), "train_state.pt is unreadable"),
    "refused global": (
        lambda f: _edit(f, lambda p: p["extra"].update(args=argparse.Namespace())),
        "unreadable",
    ),
    "unreadable LoRA": (lambda f: _truncate(f / "lora.safetensors"), "lora.safetensors is unreadable"),
    "no LoRA": (lambda f: (f / "lora.safetensors").unlink(), "no lora.safetensors in it"),
}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err and "WARNING" not in err, err
    return errors[0]


@pytest.mark.parametrize("case", DAMAGE)
def test_named_damaged_state_is_one_line_and_writes_nothing(out, capsys, case):
    damage, fragment = DAMAGE[case]
    damage(out / STEP2)
    before = _files(out)
    assert _train(out, "--max_train_steps", "2", "--resume", str(out / STEP2)) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: --resume {out / STEP2}: damaged state: ") and fragment in line, line
    assert _files(out) == before


@pytest.mark.parametrize("case", DAMAGE)
def test_auto_warns_falls_back_and_says_which_state(out, capsys, case):
    damage, fragment = DAMAGE[case]
    damage(out / STEP2)
    assert _train(out, "--max_train_steps", "1", "--resume", "auto") == 0  # step 1 reached: nothing to train
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "skipping damaged state" in line]
    assert len(warnings) == 1 and str(out / STEP2) in warnings[0] and fragment in warnings[0], err
    assert f"resumed from {out / STEP1} at step 1" in err, err


def test_auto_stops_when_every_state_is_damaged(out, capsys):
    for name in (STEP1, STEP2):
        _truncate(out / name / "train_state.pt")
    before = _files(out)
    assert _train(out, "--max_train_steps", "2", "--resume", "auto") == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(line) == 1 and "every state" in line[0] and STEP1 in line[0] and STEP2 in line[0], err
    assert _files(out) == before


CHANGED = {
    "LoRA+ off": (
        ["--network_args", "verbose=False"],
        [
            "LoRA+ was on in the state (loraplus_lr_ratio=4)",
            "restore --network_args loraplus_lr_ratio=4",
            f"--network_weights {{out}}/{STEP2}/lora.safetensors",
        ],
    ),
    "LoRA+ ratio": (["--network_args", "loraplus_lr_ratio=8"], ["loraplus_lr_ratio 4 in the state, 8 now"]),
    "optimizer": (
        # a fixed lr: Adafactor's default relative_step would replace the schedule (musubi-tuner's rule)
        ["--optimizer_type", "Adafactor", "--optimizer_args", "relative_step=False"],
        ["optimizer AdamW in the state, Adafactor now", "restore --optimizer_type AdamW"],
    ),
    "optimizer args": (
        ["--optimizer_args", "weight_decay=0.1"],
        [
            "optimizer setting weight_decay 0.01 in the state, 0.1 now",
            "restore --optimizer_args weight_decay=0.01",
        ],
    ),
    "learning rate": (
        ["--learning_rate", "3e-3"],
        ["learning rate 0.001 in the state, 0.003 now", "restore --learning_rate 0.001"],
    ),
    "rank": (
        ["--network_dim", "8"],
        ["LoRA rank 4 in the state, 8 now", "restore --network_dim 4", "start fresh without the state"],
    ),
    "alpha": (["--network_alpha", "2"], ["LoRA alpha 4 in the state, 2 now", "restore --network_alpha 4"]),
    "modules": (
        ["--network_args", "loraplus_lr_ratio=4", "exclude_patterns=[r'.*single_blocks.*']"],
        ["the LoRA wraps other modules (20 in the state, 16 now", "exclude_patterns"],
    ),
    "network module": (
        ["--network_module", "networks.loha", "--network_args", "verbose=False"],  # LoHa takes no LoRA+
        [
            "network module networks.lora in the state, networks.loha now",
            "--network_module networks.lora",
        ],
    ),
    "dataset": (["--dataset_config", "demo/dataset.toml"], ["6 batches per epoch in the state, 14 now"]),
    "scheduler": (
        ["--lr_scheduler", "cosine"],
        [
            "lr scheduler constant_with_warmup in the state, cosine now",
            "restore --lr_scheduler constant_with_warmup",
        ],
    ),
}


@pytest.mark.parametrize("case", CHANGED)
def test_changed_option_is_one_line_naming_it_and_the_fix(out, capsys, monkeypatch, tmp_path, case):
    extra, fragments = CHANGED[case]
    (tmp_path / "other_lora.py").write_text("from networks.lora import create_network  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _files(out)
    assert _train(out, "--max_train_steps", "2", "--resume", str(out / STEP2), *extra) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: --resume {out / STEP2}: the state does not fit this run: "), line
    for fragment in fragments:
        assert fragment.format(out=out) in line, line
    assert _files(out) == before


def test_auto_stops_on_a_changed_option_instead_of_falling_back(out, capsys):
    assert _train(out, "--max_train_steps", "2", "--resume", "auto", "--network_args", "verbose=False") == 2
    line = _one_error(capsys)
    assert (
        f"--resume auto: newest whole state {out / STEP2}: the state does not fit" in line and "LoRA+" in line
    )


def test_state_without_record_resumes_with_a_note_and_is_still_checked(out, capsys):
    """States saved before the record existed: what they hold is checked (LoRA, groups, rates, the optimizer's
    settings), the rest is noted; an unchanged run resumes from them."""
    _edit(out / STEP2, lambda p: p.pop("run"))
    resume = ["--max_train_steps", "2", "--resume", str(out / STEP2)]
    assert _train(out, *resume, "--network_args", "verbose=False") == 2
    assert "LoRA+ was on in the state" in _one_error(capsys)
    assert (
        _train(out, *resume, "--optimizer_type", "Adafactor", "--optimizer_args", "relative_step=False") == 2
    )
    assert "another --optimizer_type" in _one_error(capsys)
    assert _train(out, *resume) == 0
    err = capsys.readouterr().err
    assert "has no run record" in err and f"resumed from {out / STEP2} at step 2" in err, err
    record = torch.load(out / STEP2 / "train_state.pt", weights_only=True)["run"]  # saved again at the end
    assert record["optimizer_type"] == "AdamW" and record["batches_per_epoch"] == 6
    assert record["groups"] == [{"kind": "lora", "params": 20}, {"kind": "lora_plus", "params": 20}]


def test_a_state_for_another_dit_is_named(out, capsys):
    """Same modules and rank, other layer widths: the state was trained on another DiT (a traceback in
    load_state_dict before)."""
    from safetensors.torch import load_file, save_file

    lora = out / STEP2 / "lora.safetensors"
    tensors = load_file(str(lora))
    key = sorted(k for k in tensors if k.endswith("lora_up.weight"))[0]
    tensors[key] = torch.zeros(tensors[key].shape[0] * 2, tensors[key].shape[1])
    save_file(tensors, str(lora))
    assert _train(out, "--max_train_steps", "2", "--resume", str(out / STEP2)) == 2
    line = _one_error(capsys)
    assert f"{key} is {tuple(tensors[key].shape)} in the state" in line and "restore the --dit" in line, line
