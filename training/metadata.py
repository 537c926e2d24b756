"""The metadata in a LoRA file's header: the `ss_*` keys (what it was trained from and how, kohya/musubi-style)
and the `modelspec.*` keys (Stability AI's model spec, as musubi-tuner writes them)."""

from __future__ import annotations

import datetime
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from networks.build import Network
    from training.options import TrainConfig


def training_metadata(
    config: TrainConfig,
    network: Network,
    dataset_summary: list[dict],
    steps: int,
    epoch: int,
    base_id: str,
    now: float | None = None,
) -> dict[str, str]:
    """All values are strings (safetensors metadata). --no_metadata keeps only what a loader needs; the
    modelspec keys are written either way, as in musubi-tuner."""
    now = time.time() if now is None else now
    meta = (
        minimal_metadata(config, network)
        if config.metadata.no_metadata
        else _ss_metadata(config, network, dataset_summary, steps, epoch, base_id, now)
    )
    meta.update(modelspec_metadata(config, now))
    return meta


def _ss_metadata(
    config: TrainConfig,
    network: Network,
    dataset_summary: list[dict],
    steps: int,
    epoch: int,
    base_id: str,
    now: float,
) -> dict[str, str]:
    spec = network.spec
    meta = {
        "ss_network_module": config.network.network_module,
        "ss_network_dim": str(spec.dim),
        "ss_network_alpha": str(spec.alpha),
        "ss_network_dropout": str(spec.dropout),
        "ss_network_args": json.dumps(list(config.network.network_args)),
        "ss_loraplus_lr_ratio": str(spec.args.loraplus_lr_ratio),
        "ss_learning_rate": str(config.optimizer.learning_rate),
        "ss_optimizer": str(config.optimizer.optimizer_type),
        "ss_lr_scheduler": str(config.optimizer.lr_scheduler),
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_seed": str(config.training.seed),
        "ss_mixed_precision": str(config.training.mixed_precision),
        "ss_timestep_sampling": str(config.flow.timestep_sampling),
        "ss_discrete_flow_shift": str(config.flow.discrete_flow_shift),
        "ss_guidance_scale": str(config.flow.guidance_scale),
        "ss_base_model_hash": base_id,
        "ss_dataset": json.dumps(dataset_summary),
        "ss_training_comment": str(config.metadata.training_comment or ""),
        "ss_output_name": str(config.saving.output_name),
        "ss_training_finished_at": str(int(now)),
        "ss_architecture": "hunyuan-video",
    }
    return meta


def minimal_metadata(config: TrainConfig, network: Network) -> dict[str, str]:
    """--no_metadata: only what a loader needs to use the file (musubi-tuner's minimum keys, and ours)."""
    return {
        "ss_network_module": network.network_module,
        "ss_network_dim": str(network.spec.dim),
        "ss_network_alpha": str(network.spec.alpha),
        "ss_network_args": json.dumps(list(config.network.network_args)),
        "ss_architecture": "hunyuan-video",
    }


ARCHITECTURE = "hunyuan-video"
IMPLEMENTATION = "https://github.com/Tencent/HunyuanVideo"


def modelspec_metadata(config: TrainConfig, now: float) -> dict[str, str]:
    """musubi-tuner's modelspec keys: --metadata_arch replaces the architecture (still `<arch>/lora`),
    --metadata_reso the placeholder resolution 1280x720; the title is --metadata_title, else --output_name,
    else `LoRA@<time>`; author, description, license and tags only when given."""
    options = config.metadata
    title = options.metadata_title if options.metadata_title is not None else config.saving.output_name
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{options.metadata_arch or ARCHITECTURE}/lora",
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": title if title is not None else f"LoRA@{now}",
        "modelspec.resolution": options.resolution,
        "modelspec.date": datetime.datetime.fromtimestamp(int(now)).isoformat(),
    }
    given = {
        "modelspec.author": options.metadata_author,
        "modelspec.description": options.metadata_description,
        "modelspec.license": options.metadata_license,
        "modelspec.tags": options.metadata_tags,
    }
    meta.update({key: value for key, value in given.items() if value is not None})
    flow = config.flow
    if flow.min_timestep is not None or flow.max_timestep is not None:
        low = flow.min_timestep if flow.min_timestep is not None else 0
        high = flow.max_timestep if flow.max_timestep is not None else 1000
        meta["modelspec.timestep_range"] = f"{low},{high}"
    return meta
