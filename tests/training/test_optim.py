"""training/optim.py: the learning-rate schedules, checked against hand-computed values, and the optimizers."""

import pytest
import torch

from hv_common.errors import UserError
from training.optim import build_optimizer, lr_lambda, steps_from


def test_schedules():
    warm = lr_lambda("constant_with_warmup", warmup=4, total=100)
    assert [warm(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_lambda("constant", warmup=4, total=100)(0) == 1.0
    cos = lr_lambda("cosine", warmup=0, total=100, min_ratio=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)
    lin = lr_lambda("linear", warmup=10, total=110)
    assert lin(60) == pytest.approx(0.5)
    wsd = lr_lambda("warmup_stable_decay", warmup=0, total=100, decay=20)
    assert wsd(79) == 1.0 and wsd(90) == pytest.approx(0.5)
    assert steps_from(0.1, 200) == 20 and steps_from(30, 200) == 30 and steps_from(None, 5) == 0


def test_optimizers():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer("AdamW", [{"params": [p], "lr": 1e-3, "kind": "lora"}], 1e-3, ["weight_decay=0.05"])
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.05
    sgd = build_optimizer("torch.optim.SGD", [{"params": [p]}], 0.1, ["momentum=0.9"])
    assert isinstance(sgd, torch.optim.SGD)
    with pytest.raises(UserError, match="unknown"):
        build_optimizer("Lion", [{"params": [p]}], 0.1, [])
    with pytest.raises(UserError, match="optimizer_args"):
        build_optimizer("AdamW", [{"params": [p]}], 0.1, ["not_an_option=1"])


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)


def test_lr_scheduler_type_builds_that_class_with_lr_scheduler_args():
    from training.optim import build_custom_scheduler

    opt = _optimizer()
    scheduler = build_custom_scheduler(opt, "StepLR", ("step_size=2", "gamma=0.5"))  # torch's, by bare name
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25]
    full = build_custom_scheduler(_optimizer(), "torch.optim.lr_scheduler.ExponentialLR", ("gamma=0.9",))
    assert type(full).__name__ == "ExponentialLR"


@pytest.mark.parametrize(
    ("name", "args", "says"),
    [
        ("NoSuchLR", (), "has no class NoSuchLR"),
        ("no_such_module.LR", (), "cannot import no_such_module"),
        ("StepLR", ("stepsize=2",), "StepLR with {'stepsize': 2}"),
    ],
)
def test_a_bad_custom_scheduler_is_one_line(name, args, says):
    from training.optim import build_custom_scheduler

    with pytest.raises(UserError, match=says.replace("{", r"\{").replace("}", r"\}")):
        build_custom_scheduler(_optimizer(), name, args)


def test_lr_scheduler_args_for_a_schedule_that_takes_none_are_refused():
    from training.args import parse_args

    with pytest.raises(UserError, match="--lr_scheduler constant takes none"):
        parse_args(["--lr_scheduler_args", "step_size=2"])
    config = parse_args(["--lr_scheduler_type", "StepLR", "--lr_scheduler_args", "step_size=2"])
    assert config.optimizer.lr_scheduler_args == ("step_size=2",)
