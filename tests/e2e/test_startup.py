"""Start-up: a run imports only what it uses (no torch._dynamo without --compile), and the AdamW that avoids
dynamo (training/eager_optim.py) is torch's AdamW to the bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.eager_optim import EagerAdamW

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOML = str(ROOT / "configs" / "tiny_demo.toml")

# Imported by nothing a plain training run does: dynamo (--compile only), DTensor (FSDP only), the encoder
# and VAE stacks (caching, previews), the trackers (--log_with). PyAV is used: with the media at hand, the
# trainer reads each video's header to list the windows the dataset TOML describes (dataset/cache_index.py).
UNUSED = (
    "torch._dynamo",
    "torch.distributed.tensor",
    "diffusers",
    "transformers",
    "tensorboard",
    "wandb",
)

_RUN = """
import json, sys
sys.path.insert(0, {root!r})
import hv_train_network
base = ["--config_file", {toml!r}, "--dit", "models/tiny_dit.safetensors", "--dataset_config", "demo/dataset.toml",
        "--output_dir", {out!r}, "--sample_prompts", "", "--save_state"]
assert hv_train_network.main(base + ["--max_train_steps", "2"]) == 0
assert hv_train_network.main(base + ["--max_train_steps", "3", "--resume", "auto"]) == 0  # load_state_dict too
print(json.dumps(sorted(m for m in {unused!r} if m in sys.modules)))
"""


def test_a_training_run_imports_no_dynamo_nor_other_unused_stacks(cached_demo, tmp_path):
    """Two runs (the second resumes the first: the optimizer's state_dict and load_state_dict both run) in a
    fresh interpreter; then none of the unused packages may be in sys.modules."""
    out = tmp_path / "out"
    code = _RUN.format(root=str(ROOT), toml=DEMO_TOML, out=str(out), unused=UNUSED)
    proc = subprocess.run([sys.executable, "-c", code], cwd=cached_demo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "tiny_lora-step00000003-state").is_dir()  # it did resume and train
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_compile_still_trains(cached_demo, tmp_path, monkeypatch):
    """--compile brings dynamo back where it is needed; the optimizer is the same either way."""
    import hv_train_network

    monkeypatch.chdir(cached_demo)
    argv = [
        "--config_file",
        DEMO_TOML,
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(tmp_path),
        "--sample_prompts",
        "",
        "--max_train_steps",
        "2",
        "--compile",
        "--compile_backend",
        "eager",
    ]
    assert hv_train_network.main(argv) == 0
    assert (tmp_path / "tiny_lora.safetensors").exists()
    assert "torch._dynamo" in sys.modules


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]


def _groups(params: list[torch.Tensor]) -> list[dict]:
    return [{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 4e-2, "weight_decay": 0.0}]


def _train(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "betas": (0.8, 0.95)}, {"foreach": True}])
def test_eager_adamw_is_torch_adamw_bit_for_bit(options):
    """Same parameters, same state, and each one's state_dict resumes the other identically."""
    ours, theirs = _params(0), _params(0)
    opt_ours = EagerAdamW(_groups(ours), lr=1e-3, weight_decay=0.1, **options)
    opt_theirs = torch.optim.AdamW(_groups(theirs), lr=1e-3, weight_decay=0.1, **options)
    _train(opt_ours, ours, 5, seed=1)
    _train(opt_theirs, theirs, 5, seed=1)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    sd_ours, sd_theirs = opt_ours.state_dict(), opt_theirs.state_dict()
    assert sd_ours["param_groups"] == sd_theirs["param_groups"]
    for i, state in sd_theirs["state"].items():
        assert state.keys() == sd_ours["state"][i].keys()
        assert all(torch.equal(v, sd_ours["state"][i][k]) for k, v in state.items())

    # crossed resume: torch's state into ours and ours into torch's, 3 more steps each
    crossed_ours, crossed_theirs = (
        [p.detach().clone().requires_grad_() for p in theirs],
        [p.detach().clone().requires_grad_() for p in ours],
    )
    resumed_ours = EagerAdamW(_groups(crossed_ours), lr=1e-3, weight_decay=0.1, **options)
    resumed_ours.load_state_dict(sd_theirs)
    resumed_theirs = torch.optim.AdamW(_groups(crossed_theirs), lr=1e-3, weight_decay=0.1, **options)
    resumed_theirs.load_state_dict(sd_ours)
    _train(resumed_ours, crossed_ours, 3, seed=2)
    _train(resumed_theirs, crossed_theirs, 3, seed=2)
    for a, b in zip(crossed_ours, crossed_theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(crossed_ours[0], ours[0])  # the resumed steps did move them


def test_eager_adamw_keeps_the_step_hooks_and_the_grad_mode():
    """Optimizer hooks (accelerate and LR schedulers use them) still run, and step() runs without autograd."""
    params = _params(0)
    opt = EagerAdamW(params, lr=1e-3)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: seen.append("post"))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert seen == ["pre", "post"]
    assert torch.is_grad_enabled()  # restored after the step
    assert all(not opt.state[p]["exp_avg"].requires_grad for p in params)


def test_eager_adamw_imports_no_dynamo():
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from training.eager_optim import EagerAdamW\n"
        "p = torch.zeros(3, requires_grad=True)\n"
        "opt = EagerAdamW([p], lr=0.1)\n"
        "p.grad = torch.ones(3)\n"
        "opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
        "sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0); sched.step()\n"
        "print(float(p[0]), 'torch._dynamo' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    value, dynamo = proc.stdout.split()
    assert float(value) == pytest.approx(-0.1, rel=1e-3) and dynamo == "False"


def test_vs_musubi_skips_without_a_checkout(tmp_path):
    """No --musubi (or no checkout there): a clear reason, exit 0, and nothing run."""
    for extra in ([], ["--musubi", str(tmp_path)]):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "vs_musubi.py"), *extra], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        reason = json.loads(proc.stdout.strip().splitlines()[-1])["skipped"]
        assert ("--musubi DIR" in reason) if not extra else ("not a musubi-tuner checkout" in reason)
        assert f"skipped: {reason}" in proc.stderr
