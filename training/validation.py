"""Validation loss on held-out data: fixed timesteps and fixed noise, so curves compare across runs and settings.

The timesteps are the quantiles 0.1 ... 0.9 of the run's own training distribution (its sampling mode and
shift), the noise is drawn from per-batch seeded generators: the same validation set gives the same inputs at
every evaluation, and evaluating never touches the training run's random state.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hunyuan_model.sampler import I2V_IN_CHANNELS, i2v_input
from training.flow import FlowSettings, flow_loss, noisy_input, sample_t
from training.options import TrainConfig

if TYPE_CHECKING:
    from dataset.train_dataset import CachedBatches

logger = logging.getLogger(__name__)
QUANTILES = tuple(q / 10 for q in range(1, 10))


def fixed_timesteps(settings: FlowSettings, draws: int = 100_000) -> torch.Tensor:
    """The quantiles of the training timestep distribution (which depends on the latent size only for flux_shift;
    a 32x32 latent stands in)."""
    t = sample_t(settings, torch.zeros(draws, 16, 1, 32, 32), torch.Generator().manual_seed(0))
    return torch.quantile(t, torch.tensor(QUANTILES))


@dataclass
class Validator:
    batches: CachedBatches  # over the validation datasets (epoch 0's order, always)
    timesteps: torch.Tensor
    i2v: bool = False  # --dit_in_channels 32: a SkyReels I2V DiT

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, network: torch.nn.Module, device, dtype, guidance_scale: float
    ) -> dict:
        was_training = network.training
        network.eval()  # no LoRA dropout while measuring
        per_t = torch.zeros(len(self.timesteps))
        try:
            for index in range(len(self.batches)):
                batch = self.batches[index]
                latents = batch["latents"].to(device)
                g = torch.Generator().manual_seed(zlib.crc32(f"validation:{index}".encode()))
                noise = torch.randn(latents.shape, generator=g).to(device)
                bsz = latents.shape[0]
                guidance = torch.full((bsz,), guidance_scale * 1000.0, device=device, dtype=dtype)
                for k, t_value in enumerate(self.timesteps.tolist()):
                    t = torch.full((bsz,), t_value)
                    x_t, target = noisy_input(latents, noise, t.to(device))
                    x_in = x_t.to(dtype)
                    if self.i2v:  # SkyReels I2V: the clean first frame as extra channels, as in training
                        x_in = i2v_input(x_in, latents)
                    pred = model(
                        x_in,
                        (t * 1000.0).to(device),
                        batch["llm"].to(device, dtype),
                        batch["llm_mask"].to(device),
                        batch["clip_pooled"].to(device, dtype),
                        guidance,
                    )
                    per_t[k] += flow_loss(pred, target, None).item()
        finally:
            network.train(was_training)
        per_t /= max(1, len(self.batches))
        result = {"loss/validation": float(per_t.mean())}
        for t, value in zip(self.timesteps.tolist(), per_t.tolist(), strict=True):
            result[f"loss/validation_t{t * 1000:.0f}"] = value
        return result


def build_validator(config: TrainConfig, flow: FlowSettings) -> Validator | None:
    from dataset.config import load_dataset_config
    from dataset.train_dataset import CachedBatches, CachedDatasetSpec

    if not config.validation.enabled:
        return None
    assert config.data.dataset_config is not None  # training requires it
    blueprint = load_dataset_config(config.data.dataset_config, check_media=False)
    if not blueprint.validation_datasets:
        from hv_common.errors import UserError

        raise UserError("--validate_every_n_steps/epochs needs [[validation_datasets]] in the dataset config")
    specs = [CachedDatasetSpec.of(d, repeats=False) for d in blueprint.validation_datasets]
    i2v = config.model.dit_in_channels == I2V_IN_CHANNELS
    return Validator(CachedBatches(specs, seed=0), fixed_timesteps(flow), i2v)
