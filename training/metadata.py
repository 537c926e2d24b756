"""The `ss_*` metadata in a LoRA file's header: what it was trained from and how (kohya/musubi-style keys)."""

from __future__ import annotations

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
) -> dict[str, str]:
    """All values are strings (safetensors metadata)."""
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
        "ss_training_finished_at": str(int(time.time())),
        "ss_architecture": "hunyuan-video",
        "modelspec.architecture": "hunyuan-video/lora",
    }
    meta.update(config.metadata.modelspec())
    return meta


def minimal_metadata(network: Network) -> dict[str, str]:
    """--no_metadata: only what a loader needs to use the file."""
    return {
        "ss_network_module": network.network_module,
        "ss_network_dim": str(network.spec.dim),
        "ss_network_alpha": str(network.spec.alpha),
        "ss_architecture": "hunyuan-video",
    }
