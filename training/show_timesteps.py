"""--show_timesteps console|image: draw timesteps as training would (--timestep_sampling and its options,
--min/--max_timestep, --num_timestep_buckets), and show their histogram and the loss weighting per timestep,
then stop; nothing is loaded. musubi-tuner opens a matplotlib window for `image`: here the figure is written
to a PNG (the command runs on headless machines too) and its path printed."""

from __future__ import annotations

from pathlib import Path

import torch

from training.flow import FlowSettings, loss_weights, sample_t, timestep_strata
from training.options import TrainConfig

DRAWS = 100_000  # musubi-tuner's
BATCH = 1_000
PER_LINE = 25  # timesteps per console line: 40 lines
WIDTH = 64  # console bar width
IMAGE_NAME = "timesteps.png"
# musubi-tuner's stand-in latent (1024 px square image): flux_shift's shift depends on its size
LATENT_SHAPE = (16, 1, 128, 128)


def timestep_counts(settings: FlowSettings, seed: int = 0, draws: int = DRAWS) -> list[int]:
    """How many of `draws` training draws fall on each integer timestep 0-999."""
    counts = torch.zeros(1000, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.zeros(BATCH, *LATENT_SHAPE[:1], 1, 1, 1).expand(BATCH, *LATENT_SHAPE)
    for index in range(draws // BATCH):
        uniform = None
        if settings.strata:  # one stream of batches per position, as in training
            strata = torch.tensor(timestep_strata(settings.strata, seed, 0, index, list(range(BATCH))))
            uniform = (strata + torch.rand(BATCH, generator=generator)) / settings.strata
        t = sample_t(settings, latents, generator, uniform)
        counts += torch.bincount((t * 1000).long().clamp(0, 999), minlength=1000)
    return counts.tolist()


def weighting(settings: FlowSettings) -> list[float]:
    """The loss weight of each timestep 1-1000 (1 where the scheme has none, or where it is infinite)."""
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000.0
    weights = loss_weights(settings, t)
    if weights is None:
        return [1.0] * 1000
    return [w if torch.isfinite(torch.tensor(w)) else 1.0 for w in weights.tolist()]


def console_lines(counts: list[int], weights: list[float]) -> list[str]:
    """musubi-tuner's console picture: 40 lines of 25 timesteps, a bar per line, counts then weights."""
    lines = []
    count_means = [sum(counts[i : i + PER_LINE]) / PER_LINE for i in range(0, 1000, PER_LINE)]
    weight_means = [sum(weights[i : i + PER_LINE]) / PER_LINE for i in range(0, 1000, PER_LINE)]
    top = max(count_means) or 1.0
    lines.append(f"Sampled timesteps: max count={top:g}")
    for i, mean in enumerate(count_means):
        lines.append(f"{i * PER_LINE:4d}-{(i + 1) * PER_LINE - 1:4d}: " + "#" * int(mean / top * WIDTH))
    heaviest = max(weight_means) or 1.0
    lines.append(f"Sampled loss weighting: max weighting={heaviest:g}")
    for i, w in enumerate(weight_means):
        bar = "#" * int(w / heaviest * WIDTH)
        lines.append(f"{i * PER_LINE:4d}-{(i + 1) * PER_LINE - 1:4d}: {w:8.2f} {bar}")
    return lines


def write_image(counts: list[int], weights: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no window: a file
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    left.bar(range(1000), counts, width=1.0)
    left.set(title="Sampled timesteps", xlabel="Timestep", ylabel="Count")
    right.bar(range(1000), weights, width=1.0)
    right.set(title="Sampled loss weighting", xlabel="Timestep", ylabel="Weighting")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def show_timesteps(config: TrainConfig) -> int:
    from training.run import flow_settings

    settings = flow_settings(config.flow)
    counts = timestep_counts(settings, config.training.seed or 0)
    weights = weighting(settings)
    if config.flow.show_timesteps == "console":
        print("\n".join(console_lines(counts, weights)))
        return 0
    path = Path(config.saving.output_dir or ".") / IMAGE_NAME
    write_image(counts, weights, path)
    print(f"timestep distribution written to {path} (musubi-tuner shows it in a window)")
    return 0
