"""hv_train_network.py end to end on the tiny demo: it learns, it saves what users need, it resumes exactly."""

import json
import math
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import hv_train_network

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")


def _train(out: Path, *extra: str) -> int:
    argv = [
        "--config_file",
        DEMO_TOML,
        "--dit",
        "models/tiny_dit.safetensors",
        "--vae",
        "models/vae",
        "--text_encoder1",
        "models/text_encoder",
        "--text_encoder2",
        "models/text_encoder_2",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        *extra,
    ]
    return hv_train_network.main(argv)


def _losses(state_dir: Path) -> list[float]:
    return torch.load(state_dir / "train_state.pt", weights_only=True)["extra"]["losses"]


def test_demo_learns_and_writes_a_usable_lora(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    assert _train(out, "--max_train_steps", "60", "--save_every_n_steps", "1000") == 0
    lora = out / "tiny_lora.safetensors"
    tensors = load_file(str(lora))
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    ups = {k: v for k, v in tensors.items() if k.endswith("lora_up.weight")}
    assert len(ups) == 2 * 8 + 2 * 2  # tiny: 2 double blocks x 8 targets + 2 single blocks x 2
    assert all(v.abs().max() > 0 for v in ups.values()), "a lora_up never moved from its zero init"
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ss_network_args"]) == ["loraplus_lr_ratio=4", "verbose=False"]
    assert meta["ss_steps"] == "60" and meta["ss_loraplus_lr_ratio"] == "4.0"
    losses = _losses(out / "tiny_lora-step00000060-state")
    assert len(losses) == 60
    assert sum(losses[-15:]) / 15 < sum(losses[:15]) / 15, "the loss did not fall"
    assert (out / "tiny_lora_loss.png").stat().st_size > 1000


def test_the_24gb_recipes_memory_options_train_together(cached_demo, tmp_path, monkeypatch):
    """fp8 scaled + checkpointing with CPU offload + split attention (+ swap, a no-op note on the CPU), as the 24 GB
    recipe combines them: the run finishes, every LoRA factor trains, and the loss is that of the plain run's
    arithmetic within fp8's rounding (the first step's, before the paths diverge)."""
    monkeypatch.chdir(cached_demo)
    memory = [
        "--fp8_scaled",
        "--gradient_checkpointing",
        "--gradient_checkpointing_cpu_offload",
        "--split_attn",
        "--blocks_to_swap",
        "2",
    ]
    runs = {}
    for name, extra in (("plain", []), ("memory", memory)):
        out = tmp_path / name
        assert (
            _train(out, "--max_train_steps", "4", "--save_every_n_steps", "1000", "--save_state", *extra) == 0
        )
        runs[name] = (
            load_file(str(out / "tiny_lora.safetensors")),
            _losses(out / "tiny_lora-step00000004-state"),
        )
    lora, losses = runs["memory"]
    assert all(v.abs().max() > 0 for k, v in lora.items() if k.endswith("lora_up.weight"))
    assert abs(losses[0] - runs["plain"][1][0]) <= 1e-3 * abs(runs["plain"][1][0])  # measured 4e-5


def test_excluding_single_blocks_leaves_no_single_block_key(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    args = ["--max_train_steps", "2", "--network_args", "exclude_patterns=[r'.*single_blocks.*']"]
    assert _train(out, *args) == 0
    keys = load_file(str(out / "tiny_lora.safetensors")).keys()
    assert keys and not [k for k in keys if "single_blocks" in k]
    assert any("double_blocks" in k for k in keys)


def test_loraplus_group_lr_during_training(cached_demo, tmp_path, monkeypatch):
    from training.args import parse_args
    from training.run import build_run
    from training.step import training_step

    monkeypatch.chdir(cached_demo)
    args = parse_args(
        [
            "--config_file",
            DEMO_TOML,
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            str(tmp_path),
            "--lr_scheduler",
            "constant",
            "--learning_rate",
            "2e-4",
        ]
    )
    run = build_run(args)
    before = {g["kind"]: [p.detach().clone() for p in g["params"]] for g in run.optimizer.param_groups}
    training_step(run, run.batches[0])
    groups = {g["kind"]: g for g in run.optimizer.param_groups}
    assert groups["lora"]["lr"] == pytest.approx(2e-4) and groups["lora_plus"]["lr"] == pytest.approx(8e-4)
    assert len(groups["lora_plus"]["params"]) == 20  # every lora_up, nothing else
    assert all(p.shape[1] == 4 for p in groups["lora_plus"]["params"])  # (out, rank): lora_up
    moved = [
        not torch.equal(a, b) for a, b in zip(before["lora_plus"], groups["lora_plus"]["params"], strict=True)
    ]
    assert all(moved)
    assert not any(
        p.requires_grad
        for p in run.model.parameters()
        if p not in set(run.optimizer.param_groups[0]["params"])
    )


def test_sigkill_then_resume_auto_is_bit_identical(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    common = [
        "--max_train_steps",
        "40",
        "--save_every_n_steps",
        "5",
        "--save_state",
        "--network_dropout",
        "0.1",
        "--network_args",
        "loraplus_lr_ratio=4",
        "rank_dropout=0.1",
    ]
    straight = tmp_path / "straight"
    assert _train(straight, *common) == 0

    killed = tmp_path / "killed"
    # Killed right after a seeded step (its state, if due, not yet saved): always mid-run, by construction.
    kill_step = random.Random(8).randint(6, 39)
    kill_script = ROOT / "tests" / "helpers" / "kill_at_step.py"
    cmd = [
        sys.executable,
        str(kill_script),
        str(kill_step),
        "--config_file",
        DEMO_TOML,
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(killed),
        "--sample_prompts",
        "",
        *common,
    ]
    proc = subprocess.run(
        cmd, cwd=cached_demo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, f"not killed at step {kill_step}: {proc.stderr[-2000:]}"
    saved = sorted(p.name for p in killed.glob("tiny_lora-step*-state"))
    assert saved[-1] == f"tiny_lora-step{5 * ((kill_step - 1) // 5):08d}-state", saved
    # What a crash can leave besides complete states: a torn temporary folder and a state without its LoRA,
    # both "newer" than anything saved. --resume auto must take neither.
    torn = killed / ".tiny_lora-step00000039-state.x1y2.tmp"
    torn.mkdir()
    (torn / "train_state.pt").write_bytes(b"torn")
    incomplete = killed / "tiny_lora-step00000038-state"
    incomplete.mkdir()
    (incomplete / "train_state.pt").write_bytes(b"no lora beside me")

    assert _train(killed, *common, "--resume", "auto") == 0
    a = load_file(str(straight / "tiny_lora.safetensors"))
    b = load_file(str(killed / "tiny_lora.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dit", "models/missing.safetensors"], "missing.safetensors"),
        (["--network_module", "networks.nope"], "networks.nope"),
        (["--dataset_config", "uncached.toml"], "run cache_latents.py"),
    ],
)
def test_wrong_input_is_one_line_exit_2(cached_demo, tmp_path, monkeypatch, capsys, extra, fragment):
    monkeypatch.chdir(cached_demo)
    Path("uncached.toml").write_text(
        '[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\n[[datasets]]\n'
        'image_directory = "demo/data/images"\ncache_directory = "nowhere/cache"\n'
    )
    assert _train(tmp_path / "out", "--max_train_steps", "1", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_unknown_option_in_config_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rte = 1e-4\n")
    assert hv_train_network.main(["--config_file", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rte" in err[0] and "did you mean" in err[0], err


def _split_config(path: Path) -> None:
    """Train on the demo's videos, validate on its images (both already cached by the fixture)."""
    path.write_text(
        '[general]\nresolution = [128, 128]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = true\n'
        '[[datasets]]\nvideo_directory = "demo/data/videos"\ncache_directory = "demo/cache/videos"\n'
        'target_frames = [1, 9, 17]\nframe_extraction = "head"\n'
        '[[validation_datasets]]\nimage_directory = "demo/data/images"\ncache_directory = "demo/cache/images"\n'
    )


def test_validation_is_fixed_and_leaves_training_untouched(cached_demo, tmp_path, monkeypatch):
    from training.args import parse_args
    from training.run import build_run
    from training.validation import QUANTILES, build_validator

    monkeypatch.chdir(cached_demo)
    _split_config(tmp_path / "split.toml")
    common = [
        "--dataset_config",
        str(tmp_path / "split.toml"),
        "--max_train_steps",
        "10",
        "--save_state_on_train_end",
    ]
    assert _train(tmp_path / "plain", *common) == 0
    assert _train(tmp_path / "validated", *common, "--validate_every_n_steps", "5") == 0
    a = load_file(str(tmp_path / "plain" / "tiny_lora.safetensors"))
    b = load_file(str(tmp_path / "validated" / "tiny_lora.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "validating changed the training run"
    state = torch.load(
        tmp_path / "validated" / "tiny_lora-step00000010-state" / "train_state.pt", weights_only=True
    )
    history = state["extra"]["validations"]
    assert [h["step"] for h in history] == [5, 10]
    assert all(math.isfinite(h["loss/validation"]) and len(h) == 2 + len(QUANTILES) for h in history)

    args = parse_args(
        [
            "--config_file",
            DEMO_TOML,
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            str(tmp_path / "split.toml"),
            "--output_dir",
            str(tmp_path / "x"),
            "--validate_every_n_steps",
            "1",
        ]
    )
    run = build_run(args)
    validator = build_validator(args, run.flow)
    assert torch.all(validator.timesteps[1:] > validator.timesteps[:-1])  # 9 increasing quantiles
    first = validator.evaluate(run.model, run.network, "cpu", torch.float32, 1.0)
    again = validator.evaluate(run.model, run.network, "cpu", torch.float32, 1.0)
    assert first == again  # fixed timesteps, fixed noise


def test_tensorboard_logs_or_a_clear_error(cached_demo, tmp_path, monkeypatch, capsys):
    import importlib.util

    monkeypatch.chdir(cached_demo)
    logs = tmp_path / "logs"
    code = _train(
        tmp_path / "out", "--max_train_steps", "2", "--log_with", "tensorboard", "--logging_dir", str(logs)
    )
    if importlib.util.find_spec("tensorboard") is None:
        assert code == 2 and "pip install tensorboard" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    else:
        assert code == 0 and list(logs.rglob("events.out.tfevents.*"))


def test_epoch_schedule_saves_and_prunes(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    args = [
        "--max_train_epochs",
        "3",
        "--save_every_n_epochs",
        "1",
        "--save_last_n_epochs",
        "1",
        "--save_every_n_steps",
        "1000",
        "--save_state",
    ]
    assert _train(out, *args) == 0
    names = sorted(p.name for p in out.iterdir())
    # epoch 1 was pruned by epoch 2; epoch 3 is the end of training, saved as the final file
    assert "tiny_lora-000002.safetensors" in names and "tiny_lora-000001.safetensors" not in names
    assert "tiny_lora.safetensors" in names and "tiny_lora-000002-state" in names
    state = torch.load(out / "tiny_lora-000002-state" / "train_state.pt", weights_only=True)
    assert state["progress"]["epoch"] == 2 and state["progress"]["batch_in_epoch"] == 0
    assert state["progress"]["step"] == 2 * 14  # 14 batches per epoch in the demo
