"""training/flow.py: the flow-matching pieces, checked against hand-computed values."""

import math

import pytest
import torch

from hv_common.errors import UserError
from training.flow import FlowSettings, flow_loss, loss_weights, noisy_input, sample_t, shift_sigmas


def test_shift_matches_hunyuan_formula():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_sigmas(t, 7.0), torch.tensor([0.0, 3.5 / 4.0, 1.0]))
    assert torch.equal(shift_sigmas(t, 1.0), t)


def test_noisy_input_interpolates_and_targets_velocity():
    x0, noise = torch.randn(2, 16, 1, 4, 4), torch.randn(2, 16, 1, 4, 4)
    x_t, target = noisy_input(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])
    assert torch.equal(target, noise - x0)


@pytest.mark.parametrize("mode", ["sigma", "uniform", "sigmoid", "shift", "flux_shift", "logsnr"])
def test_every_sampling_mode_stays_in_range(mode):
    settings = FlowSettings(
        timestep_sampling=mode, discrete_flow_shift=3.0, min_timestep=100, max_timestep=900
    )
    t = sample_t(settings, torch.zeros(4096, 16, 1, 8, 8), torch.Generator().manual_seed(0))
    assert t.shape == (4096,) and t.min() >= 0.1 - 1e-6 and t.max() <= 0.9 + 1e-6


def test_shift_moves_mass_to_high_noise():
    g = torch.Generator().manual_seed(0)
    plain = sample_t(FlowSettings(timestep_sampling="sigmoid"), torch.zeros(8192, 1), g).mean()
    shifted = sample_t(
        FlowSettings(timestep_sampling="shift", discrete_flow_shift=7.0), torch.zeros(8192, 1), g
    )
    assert 0.45 < plain < 0.55 and shifted.mean() > 0.75


def test_loss_weights_and_loss():
    t = torch.tensor([0.5])
    assert loss_weights(FlowSettings(), t) is None
    assert torch.allclose(loss_weights(FlowSettings(weighting_scheme="sigma_sqrt"), t), torch.tensor([4.0]))
    assert torch.allclose(
        loss_weights(FlowSettings(weighting_scheme="cosmap"), t), torch.tensor([4 / math.pi])
    )
    pred, target = torch.ones(2, 3), torch.zeros(2, 3)
    assert flow_loss(pred, target, torch.tensor([1.0, 3.0])).item() == pytest.approx(2.0)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="timestep_sampling"):
        FlowSettings(timestep_sampling="qinglong")
    with pytest.raises(UserError, match="min_timestep"):
        FlowSettings(min_timestep=500, max_timestep=400)


def test_preserve_distribution_shape_drops_draws_outside_the_range_instead_of_rescaling():
    # musubi-tuner's two rules for --min/--max_timestep: rescale every draw into the range, or (with
    # --preserve_distribution_shape) keep only the draws inside it, in order, drawing again until there are enough.
    from training.flow import _draw_t

    latents = torch.zeros(64, 16, 1, 4, 4)
    common = dict(timestep_sampling="sigmoid", min_timestep=300.0, max_timestep=500.0)
    kept = sample_t(
        FlowSettings(**common, preserve_distribution_shape=True), latents, torch.Generator().manual_seed(0)
    )
    g, inside = torch.Generator().manual_seed(0), []
    while len(inside) < 64:
        draws = _draw_t(FlowSettings(timestep_sampling="sigmoid"), latents, 64, g)
        inside += [v for v in draws.tolist() if 0.3 <= v <= 0.5]
    assert kept.tolist() == pytest.approx(inside[:64])
    rescaled = sample_t(FlowSettings(**common), latents, torch.Generator().manual_seed(0))
    first = _draw_t(FlowSettings(timestep_sampling="sigmoid"), latents, 64, torch.Generator().manual_seed(0))
    assert rescaled.tolist() == pytest.approx((first * 0.2 + 0.3).tolist())


def test_preserve_distribution_shape_reaches_the_trainer():
    from training.args import parse_args
    from training.run import flow_settings

    config = parse_args(["--preserve_distribution_shape", "--max_timestep", "500"])
    assert flow_settings(config.flow).preserve_distribution_shape is True
