"""`--list_lora_targets [table|json]`: what a LoRA would wrap, checked in seconds before a ten-hour run.

The model is built on the meta device (no weights are read or allocated): the 720p preset, or the
architecture read from the headers of `--dit`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from hv_common.errors import UserError
from networks.options import NetworkOptions
from training.options import TrainConfig

if TYPE_CHECKING:
    from hunyuan_model.model import HYVideoDiffusionTransformer


def meta_model(dit: str | None) -> HYVideoDiffusionTransformer:
    from hunyuan_model.checkpoint import read_dit_config
    from hunyuan_model.config import get_preset
    from hunyuan_model.model import build_dit

    if dit is not None and not Path(dit).exists():
        raise UserError(f"--dit {dit}: no such file or folder")
    config = get_preset("hunyuan-video-t2v-720p") if dit is None else read_dit_config(dit)
    return build_dit(config, device="meta")


def check_patterns_early(network: NetworkOptions, dit: str | None) -> None:
    """Parse --network_args and meet its regexes with the module names of --dit's architecture (headers only),
    so that a bad or runaway pattern stops a training run before minutes of loading weights."""
    from hunyuan_model.model import TARGET_BLOCK_CLASSES
    from networks.base import user_patterns
    from networks.build import is_ours, parse_our_args
    from networks.pattern_guard import match_sets
    from networks.selection import find_candidates

    if not is_ours(network.network_module):  # a foreign module reads its own --network_args
        return
    patterns = user_patterns(parse_our_args(network))
    if patterns:
        match_sets(patterns, [name for name, _ in find_candidates(meta_model(dit), TARGET_BLOCK_CLASSES)])


def build_report(config: TrainConfig) -> tuple[dict, dict[str, str]]:
    """The selection as plain data (the JSON object of --list_lora_targets json), and which pattern
    excluded each excluded module (for the table)."""
    from hunyuan_model.model import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES
    from networks.build import build_network, is_ours, load_network_module, parse_our_args

    load_network_module(config.network.network_module)
    if is_ours(config.network.network_module):
        parse_our_args(config.network)  # before the model: bad args fail at once
    network = build_network(
        config.network,
        meta_model(config.model.dit),
        "meta",
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
    )
    modules = [
        {
            "name": t.name,
            "lora_name": t.lora_name,
            "in_features": t.in_features,
            "out_features": t.out_features,
            "dim": t.dim,
            "alpha": t.alpha,
            "params": t.params,
        }
        for t in network.targets()
    ]
    groups = [
        {"lr": g["lr"], "params": len(g["params"]), "kind": g["kind"]}
        for g in network.prepare_optimizer_params(config.optimizer.learning_rate)
    ]
    excluded = [name for name, _ in network.selection.excluded]
    return {"modules": modules, "excluded": excluded, "param_groups": groups}, dict(
        network.selection.excluded
    )


def format_table(report: dict, excluded_by: dict[str, str] | None = None) -> str:
    """A readable summary for people: one line per module, then the exclusions and the groups."""
    modules, excluded = report["modules"], report["excluded"]
    width = max([len(m["name"]) for m in modules] + [len(n) for n in excluded] + [6])
    lines = [f"LoRA targets: {len(modules)} modules wrapped, {len(excluded)} excluded", ""]
    lines.append(f"{'module':<{width}}  {'in':>6}  {'out':>6}  {'dim':>4}  {'alpha':>7}")
    for m in modules:
        lines.append(
            f"{m['name']:<{width}}  {m['in_features']:>6}  {m['out_features']:>6}  {m['dim']:>4}  {m['alpha']:>7g}"
        )
    if excluded:
        by = excluded_by or {}
        lines += ["", "excluded (by pattern):"] + [
            f"  {name:<{width}}  {by.get(name, '')}" for name in excluded
        ]
    lines += ["", "param groups:"]
    for g in report["param_groups"]:
        lines.append(f"  {g['kind']:<9}  lr={g['lr']:g}  {g['params']} tensors")
    return "\n".join(lines)


def render(config: TrainConfig) -> str:
    report, excluded_by = build_report(config)
    return (
        json.dumps(report) if config.modes.list_lora_targets == "json" else format_table(report, excluded_by)
    )
