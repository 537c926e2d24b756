"""`LoRANetwork`: the LoRA modules of one model, their optimizer groups (LoRA+), and their file.

File keys: `lora_unet_<module path with . -> _>.lora_down.weight | .lora_up.weight | .alpha`, as musubi-tuner,
ComfyUI and the conversion scripts expect. `create_network` is what `--network_module networks.lora` calls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .lora_module import LoRAModule
from .max_norm import MaxNormFigures, apply_max_norm
from .network_args import NetworkArgs, NetworkArgsError, parse_network_args
from .pattern_guard import match_sets
from .selection import Selection, find_candidates, first_match, select, warn_unmatched

__all__ = ["LORA_PREFIX", "LoRAModule", "LoRANetwork", "LoRASpec", "create_network"]

logger = logging.getLogger(__name__)
LORA_PREFIX = "lora_unet"


def lora_name_for(module_name: str) -> str:
    return f"{LORA_PREFIX}_{module_name.replace('.', '_')}"


@dataclass(frozen=True)
class LoRASpec:
    """The settings a network is built from: the CLI's --network_dim/alpha/dropout and the parsed args."""

    multiplier: float = 1.0
    dim: int = 4
    alpha: float = 1.0
    dropout: float | None = None
    args: NetworkArgs = NetworkArgs()


def user_patterns(args: NetworkArgs) -> list[tuple[str, str]]:
    """(key, pattern) for every regex of the network args, in the order given."""
    return [
        *(("exclude_patterns", p) for p in args.exclude_patterns),
        *(("include_patterns", p) for p in args.include_patterns),
        *(("rank_patterns", p) for p, _ in args.rank_patterns),
        *(("alpha_patterns", p) for p, _ in args.alpha_patterns),
    ]


class LoRANetwork(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        spec: LoRASpec,
        target_block_classes: Sequence[str],
        default_exclude_patterns: Sequence[str],
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        args = spec.args
        candidates = find_candidates(model, target_block_classes)
        names = [n for n, _ in candidates]
        self._matches = match_sets(
            [*user_patterns(args), *(("the default exclude_patterns", p) for p in default_exclude_patterns)],
            names,
        )
        warn_unmatched("exclude_patterns", args.exclude_patterns, names, self._matches)
        warn_unmatched("include_patterns", args.include_patterns, names, self._matches)
        warn_unmatched("rank_patterns", [p for p, _ in args.rank_patterns], names, self._matches)
        warn_unmatched("alpha_patterns", [p for p, _ in args.alpha_patterns], names, self._matches)

        self.selection: Selection = select(
            candidates,
            [*args.exclude_patterns, *default_exclude_patterns],
            args.include_patterns,
            self._matches,
        )
        if not self.selection.targets:
            raise NetworkArgsError(
                f"the LoRA selection wraps no module: all {len(names)} candidates are excluded "
                f"(exclude_patterns={list(args.exclude_patterns)}, include_patterns={list(args.include_patterns)})"
            )
        self.loras: list[LoRAModule] = self._make_loras(device)
        for lora in self.loras:
            self.add_module(lora.lora_name, lora)  # registered names == file keys
        self.module_names = [name for name, _ in self.selection.targets]
        if args.verbose:
            self._log_selection()

    def _make_loras(self, device: torch.device | str | None) -> list[LoRAModule]:
        spec, args = self.spec, self.spec.args
        ranks, alphas, matches = args.rank_patterns, args.alpha_patterns, self._matches
        return [
            LoRAModule(
                lora_name_for(name),
                linear,
                multiplier=spec.multiplier,
                lora_dim=first_match(ranks, name, matches) or spec.dim,  # first matching pattern wins
                alpha=first_match(alphas, name, matches) or spec.alpha,
                dropout=spec.dropout,
                rank_dropout=args.rank_dropout,
                module_dropout=args.module_dropout,
                device=device,
            )
            for name, linear in self.selection.targets
        ]

    # --- use -------------------------------------------------------------------------------------------

    def apply_to(self, model: nn.Module) -> None:
        """Route each wrapped Linear of `model` through its LoRA (the model's names and keys do not change)."""
        for name, lora in zip(self.module_names, self.loras, strict=True):
            if model.get_submodule(name) is not lora.org_module:
                raise ValueError(f"this LoRA network was built for another model: {name} differs")
        for lora in self.loras:
            lora.apply_to()

    def restore(self) -> None:
        for lora in self.loras:
            lora.restore()

    def set_multiplier(self, multiplier: float) -> None:
        for lora in self.loras:
            lora.multiplier = multiplier

    def apply_max_norm_regularization(self, max_norm: float, device: torch.device | str) -> MaxNormFigures:
        """--scale_weight_norms (networks/max_norm.py): cap each module's update norm, in place."""
        pairs = [(lora.lora_down.weight, lora.lora_up.weight, lora.scale) for lora in self.loras]
        return apply_max_norm(pairs, max_norm, device)

    def prepare_optimizer_params(self, lr: float) -> list[dict[str, Any]]:
        """One group at `lr`; with LoRA+ (ratio R) every lora_up weight goes to a second group at lr x R.

        lora_up is the zero-initialised factor (B in the LoRA+ paper): the one that learns too slowly at the
        shared lr. Each group carries "kind" ("lora" | "lora_plus"); torch optimizers keep unknown keys.
        """
        ratio = self.spec.args.loraplus_lr_ratio
        base = [p for lora in self.loras for p in (lora.lora_down.weight, lora.lora_up.weight)]
        groups: list[dict[str, Any]]  # torch's param-group dicts: a list of tensors, numbers and a name
        if ratio is None:
            groups = [{"params": base, "lr": lr, "kind": "lora"}]
        else:
            ups = [lora.lora_up.weight for lora in self.loras]
            up_ids = {id(p) for p in ups}
            rest = [p for p in base if id(p) not in up_ids]
            groups = [
                {"params": rest, "lr": lr, "kind": "lora"},
                {"params": ups, "lr": lr * ratio, "kind": "lora_plus"},
            ]
        if self.spec.args.verbose:
            for g in groups:
                logger.info("param group %s: lr=%g, %d tensors", g["kind"], g["lr"], len(g["params"]))
        return groups

    # --- verbose ---------------------------------------------------------------------------------------

    def _log_selection(self) -> None:
        for name, lora in zip(self.module_names, self.loras, strict=True):
            logger.info(
                "lora %s: in=%d out=%d dim=%d alpha=%g",
                name,
                lora.in_features,
                lora.out_features,
                lora.lora_dim,
                float(lora.alpha),
            )
        for name, pattern in self.selection.excluded:
            logger.info("excluded %s by %r", name, pattern)
        logger.info("LoRA: %d modules wrapped, %d excluded", len(self.loras), len(self.selection.excluded))


def create_network(
    multiplier: float,
    network_dim: int | None,
    network_alpha: float | None,
    model: nn.Module,
    *,
    target_block_classes: Sequence[str],
    default_exclude_patterns: Sequence[str],
    neuron_dropout: float | None = None,
    network_args: NetworkArgs | Sequence[str] | None = None,
    device: torch.device | str | None = None,
) -> LoRANetwork:
    """Build (not apply) a LoRA network for `model`. `device` holds the LoRA weights (default CPU)."""
    args = network_args if isinstance(network_args, NetworkArgs) else parse_network_args(network_args)
    dim = 4 if network_dim is None else network_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise NetworkArgsError(f"network_dim={dim!r}: expected an integer > 0")
    alpha = 1.0 if network_alpha is None else network_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise NetworkArgsError(f"network_alpha={alpha!r}: expected a number > 0")
    if neuron_dropout is not None and (
        isinstance(neuron_dropout, bool)
        or not isinstance(neuron_dropout, (int, float))
        or not 0 <= neuron_dropout < 1
    ):
        raise NetworkArgsError(f"network_dropout={neuron_dropout!r}: expected a number in [0, 1)")
    spec = LoRASpec(multiplier, dim, float(alpha), neuron_dropout, args)
    return LoRANetwork(model, spec, target_block_classes, default_exclude_patterns, device=device)
