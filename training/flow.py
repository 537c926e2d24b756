"""Flow matching for training: timestep sampling (musubi-tuner's modes), noising, target and loss weights.

Convention (the sampler uses the same): x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0, and it is
given t x 1000 as its timestep.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import torch

from hv_common.errors import UserError
from training.options import TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowSettings:
    timestep_sampling: str = "sigma"
    discrete_flow_shift: float = 1.0
    sigmoid_scale: float = 1.0
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    min_timestep: float = 0.0
    max_timestep: float = 1000.0
    preserve_distribution_shape: bool = False  # min/max timestep by rejection, not by rescaling
    num_timestep_buckets: int | None = None  # stratified uniform draws (2 or more); None, 0, 1: off

    @property
    def strata(self) -> int:
        """The number of timestep buckets in use (0: off)."""
        k = self.num_timestep_buckets or 0
        return k if k > 1 else 0

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise UserError(
                f"--timestep_sampling {self.timestep_sampling}: not supported; use one of {', '.join(TIMESTEP_SAMPLINGS)}"
            )
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise UserError(
                f"--weighting_scheme {self.weighting_scheme}: use one of {', '.join(WEIGHTING_SCHEMES)}"
            )
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise UserError(
                f"--min_timestep {self.min_timestep} / --max_timestep {self.max_timestep}: need 0 <= min < max <= 1000"
            )
        if self.strata and self.timestep_sampling == "sigma":
            logger.warning(
                "--num_timestep_buckets %d has no effect with --timestep_sampling sigma (as in musubi-tuner, "
                "which stratifies the other samplings only): pick uniform, sigmoid, shift, flux_shift or logsnr",
                self.strata,
            )


def shift_sigmas(t: torch.Tensor, shift: float) -> torch.Tensor:
    """HunyuanVideo's time shift: more steps at high noise for shift > 1."""
    return (t * shift) / (1 + (shift - 1) * t)


def _density(settings: FlowSettings, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """u in [0, 1) from the weighting scheme's density (SD3's compute_density_for_timestep_sampling)."""
    if settings.weighting_scheme == "logit_normal":
        u = torch.randn(n, generator=generator) * settings.logit_std + settings.logit_mean
        return torch.sigmoid(u)
    u = torch.rand(n, generator=generator)
    if settings.weighting_scheme == "mode":
        return 1 - u - settings.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def _flux_mu(latent_tokens: int) -> float:
    """Flux's resolution-dependent shift: mu linear in the token count, 256 -> 0.5, 4096 -> 1.15."""
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (latent_tokens - 256)


def sample_t(
    settings: FlowSettings,
    latents: torch.Tensor,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """t in (0, 1) per batch item, on the CPU (the same draws on any device), within --min/--max_timestep:
    the draws rescaled into that range, or with --preserve_distribution_shape, the draws outside it dropped
    and drawn again (musubi-tuner's rule: at most 1000 rounds, then a warning and unrestricted draws).
    `uniform`: one stratified draw in [0, 1) per item (--num_timestep_buckets) that stands for the random
    source of the first round (later rejection rounds draw freely)."""
    n = latents.shape[0]
    lo, hi = settings.min_timestep / 1000.0, settings.max_timestep / 1000.0
    if not settings.preserve_distribution_shape:
        return _draw_t(settings, latents, n, generator, uniform) * (hi - lo) + lo
    kept: list[torch.Tensor] = []
    for round_ in range(REJECTION_ROUNDS):
        t = _draw_t(settings, latents, n, generator, uniform if round_ == 0 else None)
        kept.extend(t[(t >= lo) & (t <= hi)])
        if len(kept) >= n:
            return torch.stack(kept[:n])
    logger.warning(
        "--preserve_distribution_shape: %d rounds drew fewer than %d timesteps in [%g, %g]; using unrestricted "
        "draws for this batch",
        REJECTION_ROUNDS,
        n,
        settings.min_timestep,
        settings.max_timestep,
    )
    return _draw_t(settings, latents, n, generator)


REJECTION_ROUNDS = 1000


def _normal(n: int, generator: torch.Generator | None, uniform: torch.Tensor | None) -> torch.Tensor:
    """Standard normal draws, or the normal quantiles of given uniform draws (musubi-tuner's erfinv rule)."""
    if uniform is None:
        return torch.randn(n, generator=generator)
    u = uniform.clamp(1e-7, 1.0 - 1e-7)
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def _draw_t(
    settings: FlowSettings,
    latents: torch.Tensor,
    n: int,
    generator: torch.Generator | None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """t in (0, 1) from --timestep_sampling, before --min/--max_timestep; `uniform` (stratified draws) stands
    for the mode's random source, as musubi-tuner maps them (sigma ignores them, as there)."""
    mode = settings.timestep_sampling
    if mode == "sigma":
        # The discrete scheduler's sigmas (1000 steps, shifted), picked by the weighting scheme's density.
        index = (_density(settings, n, generator) * 1000).long().clamp(0, 999)
        t = shift_sigmas(1.0 - index.float() / 1000.0, settings.discrete_flow_shift)
    elif mode == "uniform":
        t = torch.rand(n, generator=generator) if uniform is None else uniform.clone()
    elif mode == "logsnr":
        logsnr = _normal(n, generator, uniform) * settings.logit_std + settings.logit_mean
        t = torch.sigmoid(-logsnr / 2)
    else:
        t = torch.sigmoid(settings.sigmoid_scale * _normal(n, generator, uniform))
        if mode == "shift":
            t = shift_sigmas(t, settings.discrete_flow_shift)
        elif mode == "flux_shift":
            tokens = latents.shape[-3] * (latents.shape[-2] // 2) * (latents.shape[-1] // 2)
            mu = _flux_mu(tokens)
            t = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return t


def seeded_draws(
    settings: FlowSettings,
    latents: torch.Tensor,
    seeds: torch.Tensor,
    strata: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, t) for each item from its own generator, on the CPU: an item's draws depend on its seed only,
    not on the batch it shares, the process that trains it, or how many draws came before. `strata`: each
    item's timestep bucket (--num_timestep_buckets, see `timestep_strata`); its uniform draw falls in it."""
    noise, ts = [], []
    for i, seed in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(int(seed))
        uniform = None
        if strata is not None:
            uniform = (strata[i] + torch.rand(1, generator=g)) / settings.strata
        ts.append(sample_t(settings, latents[i : i + 1], g, uniform))
        noise.append(torch.randn(tuple(latents.shape[1:]), generator=g))
    return torch.stack(noise).to(latents.dtype), torch.cat(ts)


def timestep_strata(buckets: int, seed: int, epoch: int, index: int, positions: list[int]) -> list[int]:
    """--num_timestep_buckets: the bucket of each item of batch `index` of `epoch`, at these positions of the
    global batch. Each position's stream of batches goes through the buckets in cycles of `buckets` batches,
    each cycle a fresh random order (musubi-tuner's pool of slices, shuffled, drawn until empty): every run
    of that many steps draws exactly once from each slice of [0, 1), and the order is a function of
    (seed, epoch, index, position) alone, so a resumed or data-parallel run draws the same."""
    cycle, place = divmod(index, buckets)
    out = []
    for position in positions:
        order = list(range(buckets))
        random.Random(f"{seed}:{epoch}:{cycle}:{position}").shuffle(order)
        out.append(order[place])
    return out


def loss_weights(settings: FlowSettings, t: torch.Tensor) -> torch.Tensor | None:
    """Per-item loss weights (SD3's compute_loss_weighting_for_sd3); None means uniform."""
    if settings.weighting_scheme == "sigma_sqrt":
        return (t**-2.0).float()
    if settings.weighting_scheme == "cosmap":
        return (2 / (math.pi * (1 - 2 * t + 2 * t**2))).float()
    return None


def noisy_input(
    latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target) for latents (B, C, F, H, W) and t (B,)."""
    tb = t.to(latents.device, latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
    return (1 - tb) * latents + tb * noise, noise - latents


def flow_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    item_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean per-item MSE; with item_scale, the sum of per-item losses times it (a data-parallel share of
    a global batch's mean, where pads have scale 0)."""
    per_item = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if weights is not None:
        per_item = per_item * weights.to(per_item.device)
    if item_scale is not None:
        return (per_item * item_scale.to(per_item.device)).sum()
    return per_item.mean()
