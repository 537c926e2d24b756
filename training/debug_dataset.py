"""`--debug_dataset`: what the trainer's batches hold, read from the cache, without loading any model."""

from __future__ import annotations

from hv_common.errors import UserError
from training.options import TrainConfig


def show_batches(config: TrainConfig, limit: int = 8) -> int:
    from dataset.config import load_dataset_config
    from dataset.train_dataset import CachedBatches, CachedDatasetSpec

    if not config.data.dataset_config:
        raise UserError("--debug_dataset needs --dataset_config")
    blueprint = load_dataset_config(config.data.dataset_config, check_media=False)
    specs = [CachedDatasetSpec.of(d) for d in blueprint.datasets]
    batches = CachedBatches(specs, seed=config.training.seed or 0)
    print(
        f"{len(batches)} batches per epoch from {len(specs)} dataset(s); the first {min(limit, len(batches))}:"
    )
    for index in range(min(limit, len(batches))):
        items = batches._plan[index]
        batch = batches[index]
        tokens = batch["llm_mask"].sum(1).tolist()
        print(
            f"  batch {index}: latents {tuple(batch['latents'].shape)}, LLM states "
            f"{tuple(batch['llm'].shape)} (valid tokens {tokens}), CLIP {tuple(batch['clip_pooled'].shape)}"
        )
        for item in items:
            print(f"    {item.latent_path.name}")
    return 0
