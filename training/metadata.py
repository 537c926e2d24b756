"""The `ss_*` metadata in a LoRA file's header: what it was trained from and how (kohya/musubi-style keys)."""

from __future__ import annotations

import json
import time


def training_metadata(
    args, network, dataset_summary: list[dict], steps: int, epoch: int, base_id: str
) -> dict[str, str]:
    """All values are strings (safetensors metadata). `args` is the parsed TrainArgs."""
    spec = network.spec
    meta = {
        "ss_network_module": args.network_module,
        "ss_network_dim": str(spec.dim),
        "ss_network_alpha": str(spec.alpha),
        "ss_network_dropout": str(spec.dropout),
        "ss_network_args": json.dumps(list(args.network_args)),
        "ss_loraplus_lr_ratio": str(spec.args.loraplus_lr_ratio),
        "ss_learning_rate": str(args.learning_rate),
        "ss_optimizer": str(args.optimizer_type),
        "ss_lr_scheduler": str(args.lr_scheduler),
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_seed": str(args.seed),
        "ss_mixed_precision": str(args.mixed_precision),
        "ss_timestep_sampling": str(args.timestep_sampling),
        "ss_discrete_flow_shift": str(args.discrete_flow_shift),
        "ss_guidance_scale": str(args.guidance_scale),
        "ss_base_model_hash": base_id,
        "ss_dataset": json.dumps(dataset_summary),
        "ss_training_comment": str(args.training_comment or ""),
        "ss_output_name": str(args.output_name),
        "ss_training_finished_at": str(int(time.time())),
        "ss_architecture": "hunyuan-video",
        "modelspec.architecture": "hunyuan-video/lora",
    }
    for field in ("title", "author", "description", "license", "tags"):
        value = getattr(args, f"metadata_{field}", None)
        if value:
            meta[f"modelspec.{field}"] = str(value)
    return meta


def minimal_metadata(network) -> dict[str, str]:
    """--no_metadata: only what a loader needs to use the file."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(network.spec.dim),
            "ss_network_alpha": str(network.spec.alpha), "ss_architecture": "hunyuan-video"}  # fmt: skip
