"""training/optim.py: the schedules musubi-tuner has beyond transformers' (rex, piecewise_constant, Adafactor's
own), and Adafactor's defaults, as musubi-tuner's get_optimizer / get_lr_scheduler set them."""

from __future__ import annotations

import pytest
import torch

from hv_common.errors import UserError
from training.args import parse_args
from training.optim import build_optimizer, build_schedule


def _lrs(argv: list[str], steps: int, optimizer: torch.optim.Optimizer | None = None) -> list[float]:
    """The lr of each of `steps` optimizer steps under the schedule the command line builds."""
    opt = parse_args(["--learning_rate", "0.5", *argv]).optimizer
    optimizer = optimizer or torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=opt.learning_rate)
    scheduler = build_schedule(optimizer, opt, steps)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_rex_follows_musubi_tuners_rexlr():
    # musubi-tuner's RexLR gives these (checked once against its class): min lr 1% of the lr by default,
    # z / (0.1 + 0.9 z) with z = 1 -> 1/10
    lrs = _lrs(["--lr_scheduler", "rex"], 10)
    assert lrs[:4] == pytest.approx([0.5, 0.49456, 0.48793, 0.47966], abs=1e-5)
    z = 0.1
    assert lrs[-1] == pytest.approx(0.5 * (0.01 + 0.99 * z / (0.1 + 0.9 * z)))
    # warmup from the floor (--lr_scheduler_min_lr_ratio) up to the lr, rex_alpha/rex_beta from the args
    warm = _lrs(["--lr_scheduler", "rex", "--lr_warmup_steps", "5", "--lr_scheduler_min_lr_ratio", "0"], 20)
    assert warm[:6] == pytest.approx([0.41667, 0.0, 0.125, 0.25, 0.375, 0.5], abs=1e-5)
    flatter = _lrs(["--lr_scheduler", "rex", "--lr_scheduler_args", "rex_alpha=0.5", "rex_beta=0.5"], 10)
    assert flatter[5] == pytest.approx(0.5 * (0.01 + 0.99 * 0.5 / (0.5 + 0.5 * 0.5)))


def test_piecewise_constant_follows_its_step_rules():
    rules = 'step_rules="1:3,0.1:5,0.01"'
    assert _lrs(["--lr_scheduler", "piecewise_constant", "--lr_scheduler_args", rules], 7) == pytest.approx(
        [0.5, 0.5, 0.5, 0.05, 0.05, 0.005, 0.005]
    )
    unquoted = ["--lr_scheduler", "piecewise_constant", "--lr_scheduler_args", "step_rules=0.5:2,1"]
    assert _lrs(unquoted, 3) == pytest.approx([0.25, 0.25, 0.5])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--lr_scheduler", "piecewise_constant"], "needs --lr_scheduler_args step_rules="),
        (["--lr_scheduler", "piecewise_constant", "--lr_scheduler_args", "step_rules=1:x,2"], "factor:step"),
        (
            ["--lr_scheduler", "rex", "--lr_scheduler_args", "gamma=2"],
            "gamma: --lr_scheduler rex takes rex_alpha",
        ),
        (["--lr_scheduler", "cosine", "--lr_scheduler_args", "x=1"], "--lr_scheduler cosine takes none"),
    ],
)
def test_bad_schedule_arguments_are_one_line_at_parse_time(argv, says):
    with pytest.raises(UserError, match=says):
        parse_args(argv)


def _adafactor(args: list[str]) -> torch.optim.Optimizer:
    p = torch.nn.Parameter(torch.ones(4, 4))
    return build_optimizer("Adafactor", [{"params": [p], "lr": 0.5, "kind": "lora"}], 0.5, args)


def test_adafactor_defaults_to_its_relative_step_and_its_own_schedule(caplog):
    opt = _adafactor([])
    assert opt.defaults["relative_step"] is True and opt.defaults["lr"] is None
    assert opt.defaults["scale_parameter"] is True and opt.defaults["warmup_init"] is False  # transformers'
    config = parse_args(["--learning_rate", "0.5", "--lr_scheduler", "cosine"]).optimizer
    with caplog.at_level("WARNING", logger="training.optim"):
        scheduler = build_schedule(opt, config, 10)
    assert type(scheduler).__name__ == "AdafactorSchedule" and "replaced by adafactor" in caplog.text
    param = opt.param_groups[0]["params"][0]
    param.grad = torch.ones_like(param)
    opt.step()
    scheduler.step()
    # Adafactor's own step size (1e-2 at the first step, times the weight's RMS), not --learning_rate
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert _lrs(["--lr_scheduler", "adafactor"], 1, _adafactor([])) == [0.5]  # the initial lr, logged only


def test_adafactor_with_a_fixed_lr_keeps_the_named_schedule():
    opt = _adafactor(["relative_step=False"])
    assert opt.defaults["lr"] == 0.5
    assert _lrs(["--lr_scheduler", "linear"], 4, opt) == pytest.approx([0.5, 0.375, 0.25, 0.125])
    forced = _adafactor(["relative_step=False", "warmup_init=True"])  # musubi-tuner: warmup_init forces it on
    assert forced.defaults["relative_step"] is True


def test_adafactor_schedule_refuses_what_it_cannot_do():
    with pytest.raises(UserError, match="Adafactor with relative_step=True schedules itself; set it to 0"):
        _lrs(["--lr_warmup_steps", "2"], 4, _adafactor([]))
    with pytest.raises(UserError, match="--lr_scheduler adafactor is Adafactor's own step size"):
        _lrs(["--lr_scheduler", "adafactor"], 2)


def test_adafactor_relative_step_says_that_lora_plus_has_no_effect(caplog):
    p, q = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    groups = [{"params": [p], "lr": 0.5, "kind": "lora"}, {"params": [q], "lr": 2.0, "kind": "lora_plus"}]
    optimizer = build_optimizer("Adafactor", groups, 0.5, [])
    with caplog.at_level("WARNING", logger="training.optim"):
        build_schedule(optimizer, parse_args(["--learning_rate", "0.5"]).optimizer, 4)
    assert "the LoRA+ ratio has no effect" in caplog.text
