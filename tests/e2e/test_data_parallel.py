"""Data parallel: 2 processes at batch size B train the same LoRA as 1 process at 2B, and only one of them
writes and speaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import hv_train_network
from dataset.train_dataset import CachedBatches, CachedDatasetSpec
from training.flow import FlowSettings, flow_loss, seeded_draws

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")
# Measured 2.8e-8 (12 steps of the demo, OMP_NUM_THREADS=1): only the summation order of the gradient average
# differs from one process. Pinned with margin; a lost all-reduce or a wrong pad weight gives ~1e-2.
MAX_ABS_DIFF = 1e-6


def _demo_specs(root: Path, batch_size: int) -> list[CachedDatasetSpec]:
    return [
        CachedDatasetSpec(root / "demo/cache/images", batch_size, num_repeats=2),
        CachedDatasetSpec(root / "demo/cache/videos", batch_size),
    ]


def test_demo_global_batches_divide_evenly_where_buckets_allow(cached_demo):
    """The demo at 2 processes x 1: images (3 buckets x 2 repeats) fill 3 global batches of 2; each of the 8
    video windows is its own bucket, so 8 global batches hold 1 item (and a pad)."""
    batches = CachedBatches(_demo_specs(cached_demo, 1), seed=42, num_processes=2)
    sizes = sorted(len(batches._plan[i]) for i in range(len(batches)))
    assert sizes == [1] * 8 + [2] * 3


def test_each_process_trains_its_share_of_the_one_process_batch(cached_demo):
    """Process r's slice of global batch i is items r*B.. of what one process at 2B gets as batch i: the same
    items, noise seeds and LLM padding; a short global batch is padded with weight-0 copies."""
    whole = CachedBatches(_demo_specs(cached_demo, 2), seed=7)
    shares = [
        CachedBatches(_demo_specs(cached_demo, 1), seed=7, num_processes=2, process_index=r) for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == len(whole) == 11
    for epoch in (0, 3):
        for i in range(len(whole)):
            ref = whole[(epoch, i)]
            parts = [s[(epoch, i)] for s in shares]
            n = ref["latents"].shape[0]
            assert all(p["latents"].shape[0] == 1 for p in parts)  # equal shapes on every process
            real = [p for p in parts if p["loss_scale"].item() > 0]
            assert len(real) == n
            assert torch.equal(torch.cat([p["latents"] for p in real]), ref["latents"])
            assert torch.equal(torch.cat([p["noise_seed"] for p in real]), ref["noise_seed"])
            assert torch.equal(
                torch.cat([p["llm"] for p in real]), ref["llm"]
            )  # padded to the global longest
            assert torch.allclose(sum(p["loss_scale"] for p in parts) / 2, ref["loss_scale"].sum())
            if n == 1:  # the pad: a copy of the real item whose loss counts for nothing
                pad = parts[1]
                assert pad["loss_scale"].item() == 0 and torch.equal(pad["latents"], ref["latents"])


def test_an_items_noise_does_not_depend_on_its_batch():
    settings = FlowSettings(timestep_sampling="shift", discrete_flow_shift=7.0)
    latents = torch.zeros(3, 4, 1, 2, 2)
    noise, t = seeded_draws(settings, latents, torch.tensor([11, 12, 13]))
    alone_noise, alone_t = seeded_draws(settings, latents[1:2], torch.tensor([12]))
    assert torch.equal(noise[1:2], alone_noise) and torch.equal(t[1:2], alone_t)
    assert not torch.equal(noise[0], noise[1])
    torch.manual_seed(0)
    again = seeded_draws(settings, latents, torch.tensor([11, 12, 13]))
    assert torch.equal(again[0], noise)  # the global RNG plays no part


def test_scaled_shares_of_a_loss_average_to_the_global_mean():
    pred, target = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    whole = flow_loss(pred, target, None)
    # 3 real items over 2 processes (2 + 1 and a pad): scale P / n for real items, 0 for the pad
    first = flow_loss(pred[:2], target[:2], None, torch.tensor([2 / 3, 2 / 3]))
    second = flow_loss(
        torch.cat([pred[2:], pred[:1]]), torch.cat([target[2:], target[:1]]), None, torch.tensor([2 / 3, 0.0])
    )
    assert torch.allclose((first + second) / 2, whole)


def _common(out: Path, dataset: str) -> list[str]:
    return [
        "--config_file",
        DEMO_TOML,
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        dataset,
        "--output_dir",
        str(out),
        "--sample_prompts",
        "",
        "--max_train_steps",
        "12",
        "--save_every_n_steps",
        "5",
        "--save_state",
    ]


@pytest.mark.slow
def test_two_processes_equal_one_process_at_twice_the_batch(cached_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(cached_demo)
    double = tmp_path / "double.toml"
    double.write_text(Path("demo/dataset.toml").read_text().replace("batch_size = 1", "batch_size = 2"))
    one = tmp_path / "one"
    assert hv_train_network.main(_common(one, str(double))) == 0

    two = tmp_path / "two"
    # `accelerate launch --cpu` starts 2 processes only under MPI; torchrun's launcher (--multi_gpu) with
    # ACCELERATE_USE_CPU gives 2 CPU processes on gloo, GPU or not.
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "hv_train_network.py"),
        *_common(two, "demo/dataset.toml"),
    ]
    proc = subprocess.run(cmd, cwd=cached_demo, env=env, capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]

    a = load_file(str(one / "tiny_lora.safetensors"))
    b = load_file(str(two / "tiny_lora.safetensors"))
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < MAX_ABS_DIFF, diff
    at5 = load_file(str(one / "tiny_lora-step00000005.safetensors"))
    assert max((a[k] - at5[k]).abs().max().item() for k in a) > 1e-3  # it trained on after step 5

    # Same schedule, positions and logged (global) losses as one process.
    states = [
        torch.load(d / "tiny_lora-step00000012-state" / "train_state.pt", weights_only=True)
        for d in (one, two)
    ]
    assert states[0]["progress"] == states[1]["progress"] == {"step": 12, "epoch": 1, "batch_in_epoch": 1}
    assert states[0]["scheduler"]["last_epoch"] == states[1]["scheduler"]["last_epoch"] == 12
    assert states[1]["optimizer"]["state"][0]["step"].item() == 12
    assert torch.allclose(
        torch.tensor(states[0]["extra"]["losses"]), torch.tensor(states[1]["extra"]["losses"])
    )

    # Only the main process writes: each file once, whole, nothing left half-written.
    names = sorted(p.name for p in two.iterdir())
    assert (
        names
        == sorted(p.name for p in one.iterdir())
        == [
            "tiny_lora-step00000005-state",
            "tiny_lora-step00000005.safetensors",
            "tiny_lora-step00000010-state",
            "tiny_lora-step00000010.safetensors",
            "tiny_lora-step00000012-state",
            "tiny_lora.safetensors",
            "tiny_lora_loss.png",
            "tiny_lora_report.html",
        ]
    )
    for step, name in ((5, "tiny_lora-step00000005.safetensors"), (12, "tiny_lora.safetensors")):
        with safe_open(str(two / name), "pt") as f:
            assert f.metadata()["ss_steps"] == str(step)

    # ... and only it speaks: one start line, one progress bar, one "saved" line per file.
    assert log.count("INFO training.trainer: training: 12 steps, 11 batches per epoch, 2 process(es)") == 1
    assert log.count("steps:   0%") == 1  # one bar: the others are disabled
    for name in (
        "tiny_lora-step00000005.safetensors",
        "tiny_lora.safetensors",
        "tiny_lora-step00000012-state",
    ):
        assert log.count(f"{two / name}\n") == 1, name

    # Resuming a multi-process run: from the step-5 state alone, two processes finish bit-identical to the
    # uninterrupted two-process run (the state is the main process's; every process draws the same).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(two / "tiny_lora-step00000005-state", resumed / "tiny_lora-step00000005-state")
    cmd = [*cmd[: cmd.index("--output_dir") + 1], str(resumed), *cmd[cmd.index("--output_dir") + 2 :]]
    proc = subprocess.run(
        [*cmd, "--resume", "auto"], cwd=cached_demo, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    c = load_file(str(resumed / "tiny_lora.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)
