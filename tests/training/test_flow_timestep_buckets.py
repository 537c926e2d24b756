"""training/flow.py: --num_timestep_buckets, stratified timestep draws (musubi-tuner's pool of [0, 1) slices),
checked deterministically with fixed seeds."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from training.flow import FlowSettings, seeded_draws, timestep_strata

BUCKETS = 4


def _uniform_draws(buckets: int | None, steps: int, seed: int = 7) -> list[float]:
    """t of batch position 0 over `steps` consecutive batches of one epoch, uniform sampling."""
    settings = FlowSettings(timestep_sampling="uniform", num_timestep_buckets=buckets)
    latents = torch.zeros(1, 16, 1, 4, 4)
    out = []
    for index in range(steps):
        strata = timestep_strata(BUCKETS, seed, 0, index, [0]) if buckets else None
        seeds = torch.tensor([1000 + index])
        _, t = seeded_draws(settings, latents, seeds, strata)
        out.append(float(t[0]))
    return out


def test_every_run_of_n_steps_draws_once_from_each_slice():
    draws = _uniform_draws(BUCKETS, 40)
    for cycle in range(10):
        slices = sorted(int(t * BUCKETS) for t in draws[cycle * BUCKETS : (cycle + 1) * BUCKETS])
        assert slices == [0, 1, 2, 3], cycle
    # the same seeds without buckets: not stratified (some run of 4 misses a slice)
    plain = _uniform_draws(None, 40)
    runs = [sorted(int(t * BUCKETS) for t in plain[c * BUCKETS : (c + 1) * BUCKETS]) for c in range(10)]
    assert any(r != [0, 1, 2, 3] for r in runs)


def test_the_order_of_slices_is_random_per_cycle_and_position_and_reproducible():
    orders = {
        tuple(timestep_strata(BUCKETS, 0, 0, i, [0])[0] for i in range(c * 4, c * 4 + 4)) for c in range(8)
    }
    assert len(orders) > 1  # not one fixed order
    assert timestep_strata(BUCKETS, 0, 3, 5, [0, 1, 2]) == timestep_strata(BUCKETS, 0, 3, 5, [0, 1, 2])
    per_position = Counter(timestep_strata(BUCKETS, 0, 0, i, [2])[0] for i in range(40))
    assert set(per_position.values()) == {10}  # position 2 is a stream of its own, stratified too


@pytest.mark.parametrize("mode", ["sigmoid", "shift", "logsnr"])
def test_the_normal_samplings_take_the_stratified_draw_through_the_normal_quantile(mode):
    # slice 0 of 4 is u < 0.25: the lowest quarter of the normal, so the smallest t (logsnr: the largest)
    settings = FlowSettings(timestep_sampling=mode, num_timestep_buckets=BUCKETS, discrete_flow_shift=3.0)
    latents = torch.zeros(64, 16, 1, 4, 4)
    seeds = torch.arange(64)
    low = seeded_draws(settings, latents, seeds, [0] * 64)[1]
    high = seeded_draws(settings, latents, seeds, [3] * 64)[1]
    if mode == "logsnr":
        low, high = high, low
    assert float(low.max()) < float(high.min())


def test_sigma_sampling_ignores_buckets_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="training.flow"):
        settings = FlowSettings(timestep_sampling="sigma", num_timestep_buckets=BUCKETS)
    assert "--num_timestep_buckets 4 has no effect with --timestep_sampling sigma" in caplog.text
    latents, seeds = torch.zeros(8, 16, 1, 4, 4), torch.arange(8)
    assert torch.equal(
        seeded_draws(settings, latents, seeds, [0] * 8)[1], seeded_draws(settings, latents, seeds, [3] * 8)[1]
    )


def test_one_bucket_or_none_is_off():
    assert FlowSettings(num_timestep_buckets=1).strata == 0 and FlowSettings().strata == 0
    assert FlowSettings(num_timestep_buckets=5).strata == 5
