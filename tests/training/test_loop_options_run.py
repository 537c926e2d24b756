"""The training loop's musubi-tuner options in one short demo run: --base_weights (merged before training, said
so), --scale_weight_norms (the saved LoRA's update norms capped, the figures reported each step),
--num_timestep_buckets (every step draws stratified t) and --lr_scheduler rex (the lr the steps used)."""

from __future__ import annotations

import logging

import pytest
from demo_run import demo_argv

import hv_train_network
import training.step
import training.trainer
from lora_files.io import load_lora

CAP = 1e-4


@pytest.fixture(scope="module")
def loop_run(cached_demo, tmp_path_factory) -> dict:
    from lora_file_testing import trained_network

    from hunyuan_model.checkpoint import load_dit
    from lora_files.io import save_network

    work = tmp_path_factory.mktemp("loop_run")
    base = work / "base.safetensors"
    save_network(trained_network(load_dit(cached_demo / "models" / "tiny_dit.safetensors")), str(base))
    outcomes: list = []
    strata: list = []
    real_optimizer_step, real_draws = training.trainer.optimizer_step, training.step.seeded_draws

    def recording_step(run, losses):
        outcome = real_optimizer_step(run, losses)
        outcomes.append((outcome, [g["lr"] for g in run.optimizer.param_groups]))
        return outcome

    def recording_draws(settings, latents, seeds, given=None):
        strata.append(given)
        return real_draws(settings, latents, seeds, given)

    logger = logging.getLogger("training.base_weights")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    argv = demo_argv(
        work / "out",
        "--base_weights",
        str(base),
        "--base_weights_multiplier",
        "0.5",
        "--scale_weight_norms",
        str(CAP),
        "--num_timestep_buckets",
        "4",
        "--lr_scheduler",
        "rex",
        "--lr_warmup_steps",
        "0",
        steps=3,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cached_demo)
        patch.setattr(training.trainer, "optimizer_step", recording_step)
        patch.setattr(training.step, "seeded_draws", recording_draws)
        try:
            assert hv_train_network.main(argv) == 0
        finally:
            logger.removeHandler(handler)
    return {"out": work / "out", "outcomes": outcomes, "strata": strata, "log": records}


def test_base_weights_are_merged_before_training(loop_run):
    assert any(
        "--base_weights: 1 LoRA file(s) merged into the DiT" in m and "x0.5" in m for m in loop_run["log"]
    )


def test_scale_weight_norms_caps_the_saved_updates_and_reports_each_step(loop_run):
    saved = load_lora(next(loop_run["out"].glob("*.safetensors")))
    norms = [float(f.delta().norm()) for f in saved.weights.values()]
    assert max(norms) <= CAP * (1 + 1e-3)
    figures = [outcome.max_norm for outcome, _ in loop_run["outcomes"]]
    assert all(f is not None for f in figures) and figures[0].keys_scaled > 0
    assert all(f.max_key_norm <= CAP * (1 + 1e-3) for f in figures)
    logs = loop_run["outcomes"][0][0].tracker_logs()
    assert set(logs) == {"max_norm/keys_scaled", "max_norm/average_key_norm", "max_norm/max_key_norm"}


def test_num_timestep_buckets_stratifies_every_draw(loop_run):
    given = loop_run["strata"]
    assert len(given) == 3 and all(s is not None and all(0 <= b < 4 for b in s) for s in given)


def test_rex_sets_the_lr_of_each_step(loop_run):
    from training.optim import rex_lambda

    lr = 1e-3  # the demo's; LoRA+ ratio 4 for the second group
    factor = rex_lambda(0, 3, 0.01)
    lrs = [lrs for _, lrs in loop_run["outcomes"]]
    assert [g[0] for g in lrs] == pytest.approx([lr * factor(s) for s in (1, 2, 3)])
    assert [g[1] for g in lrs] == pytest.approx([4 * lr * factor(s) for s in (1, 2, 3)])
