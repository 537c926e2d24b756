"""`AdapterNetwork`: what LoRA, LoHa and LoKr networks share: which Linears they wrap (--network_args
exclude / include / rank / alpha patterns, the model's default exclusion), applying and restoring, the
multiplier, the optimizer groups (LoRA+ where the module has an "up" side), verbose logging, and the plain
description of each wrapped module (`targets`) that --list_lora_targets and the memory estimate read.

File keys: `lora_unet_<module path with . -> _>.<factor names> | .alpha`, as musubi-tuner writes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapter_module import LinearAdapter
from .max_norm import MaxNormFigures
from .network_args import NetworkArgs, NetworkArgsError, parse_network_args
from .pattern_guard import match_sets
from .selection import Selection, find_candidates, first_match, select, warn_unmatched

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


@dataclass(frozen=True)
class Target:
    """One wrapped Linear as --list_lora_targets and the memory estimate show it."""

    name: str  # the model's module name
    lora_name: str  # the file's key prefix
    in_features: int
    out_features: int
    dim: int
    alpha: float
    params: int  # trainable numbers of this module


def user_patterns(args: NetworkArgs) -> list[tuple[str, str]]:
    """(key, pattern) for every regex of the network args, in the order given."""
    return [
        *(("exclude_patterns", p) for p in args.exclude_patterns),
        *(("include_patterns", p) for p in args.include_patterns),
        *(("rank_patterns", p) for p, _ in args.rank_patterns),
        *(("alpha_patterns", p) for p, _ in args.alpha_patterns),
    ]


def check_network_numbers(dim: Any, alpha: Any, dropout: Any) -> tuple[int, float]:
    """--network_dim / --network_alpha / --network_dropout as a network takes them (None: musubi's 4 and 1)."""
    dim = 4 if dim is None else dim
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise NetworkArgsError(f"network_dim={dim!r}: expected an integer > 0")
    alpha = 1.0 if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise NetworkArgsError(f"network_alpha={alpha!r}: expected a number > 0")
    if dropout is not None and (
        isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1
    ):
        raise NetworkArgsError(f"network_dropout={dropout!r}: expected a number in [0, 1)")
    return dim, float(alpha)


def refuse_network_dropout(module: str, neuron_dropout: float | None) -> None:
    if neuron_dropout is not None:
        raise NetworkArgsError(
            f"--network_dropout {neuron_dropout:g}: {module} has no rank-r activations to drop (musubi-tuner "
            "ignores it there); use rank_dropout= or module_dropout= in --network_args"
        )


def network_spec(
    multiplier: float,
    network_dim: int | None,
    network_alpha: float | None,
    neuron_dropout: float | None,
    network_args: NetworkArgs | Sequence[str] | None,
    refused_args: Mapping[str, str],
    *,
    dropout_refused_by: str | None = None,
) -> LoRASpec:
    """What each module's create_network builds from: its --network_args parsed strictly (with the keys that
    module refuses), --network_dropout refused where the module has nothing to drop, then the numbers."""
    args = (
        network_args
        if isinstance(network_args, NetworkArgs)
        else parse_network_args(network_args, refused_args)
    )
    if dropout_refused_by is not None:
        refuse_network_dropout(dropout_refused_by, neuron_dropout)
    dim, alpha = check_network_numbers(network_dim, network_alpha, neuron_dropout)
    return LoRASpec(multiplier, dim, alpha, neuron_dropout, args)


class AdapterNetwork(nn.Module):
    """The adapters of one model. A subclass says how one Linear is wrapped (`make_module`) and which
    parameters LoRA+ speeds up (`plus_parameters`)."""

    kind = "adapter"  # for log lines: "lora", "loha", "lokr"
    network_module = "networks.lora"  # the --network_module that builds it (ss_network_module)
    full_delta = False  # True: each module builds its whole (out, in) update in the forward (memory estimate)

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
                f"the {self.kind} selection wraps no module: all {len(names)} candidates are excluded "
                f"(exclude_patterns={list(args.exclude_patterns)}, include_patterns={list(args.include_patterns)})"
            )
        where = torch.device("cpu") if device is None else torch.device(device)
        self.loras: list[Any] = [  # LinearAdapter subclasses; Any: each network reads its own attributes
            self.make_module(
                lora_name_for(name),
                linear,
                first_match(args.rank_patterns, name, self._matches) or spec.dim,  # first pattern wins
                first_match(args.alpha_patterns, name, self._matches) or spec.alpha,
                where,
            )
            for name, linear in self.selection.targets
        ]
        for lora in self.loras:
            self.add_module(lora.lora_name, lora)  # registered names == file keys
        self.module_names = [name for name, _ in self.selection.targets]
        if args.verbose:
            self._log_selection()

    def make_module(
        self, lora_name: str, linear: nn.Linear, dim: int, alpha: float, device: torch.device
    ) -> LinearAdapter:
        raise NotImplementedError

    def plus_parameters(self, module: Any) -> list[torch.Tensor]:
        """The parameters LoRA+ (loraplus_lr_ratio) gives the higher learning rate; none by default."""
        return []

    # --- use -------------------------------------------------------------------------------------------

    def apply_to(self, model: nn.Module) -> None:
        """Route each wrapped Linear of `model` through its adapter (the model's names and keys do not change)."""
        for name, lora in zip(self.module_names, self.loras, strict=True):
            if model.get_submodule(name) is not lora.org_module:
                raise ValueError(f"this {self.kind} network was built for another model: {name} differs")
        for lora in self.loras:
            lora.apply_to()

    def restore(self) -> None:
        for lora in reversed(self.loras):
            lora.restore()

    def set_multiplier(self, multiplier: float) -> None:
        for lora in self.loras:
            lora.multiplier = multiplier

    def targets(self) -> list[Target]:
        return [
            Target(
                name,
                lora.lora_name,
                lora.in_features,
                lora.out_features,
                lora.lora_dim,
                float(lora.alpha),
                lora.trainable_count(),
            )
            for name, lora in zip(self.module_names, self.loras, strict=True)
        ]

    def prepare_optimizer_params(self, lr: float) -> list[dict[str, Any]]:
        """One group at `lr`; with LoRA+ (ratio R) the `plus_parameters` go to a second group at lr x R.

        Each group carries "kind" ("lora" | "lora_plus"); torch optimizers keep unknown keys.
        """
        ratio = self.spec.args.loraplus_lr_ratio
        base = [p for lora in self.loras for p in lora.parameters()]
        groups: list[dict[str, Any]]  # torch's param-group dicts: a list of tensors, numbers and a name
        if ratio is None:
            groups = [{"params": base, "lr": lr, "kind": "lora"}]
        else:
            ups = [p for lora in self.loras for p in self.plus_parameters(lora)]
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

    # --- --scale_weight_norms (LoHa / LoKr; networks.lora has its own) ----------------------------------

    def apply_max_norm_regularization(self, max_norm: float, device: torch.device | str) -> MaxNormFigures:
        """(modules scaled, mean norm, largest norm) after scaling every ΔW to at most `max_norm`, as
        musubi-tuner's apply_max_norm_regularization reports for LoRA."""
        results = [lora.apply_max_norm(max_norm) for lora in self.loras]
        norms = [n for _, n in results]
        return MaxNormFigures(sum(s for s, _ in results), sum(norms) / len(norms), max(norms))

    # --- verbose ---------------------------------------------------------------------------------------

    def _log_selection(self) -> None:
        for t in self.targets():
            logger.info(
                "%s %s: in=%d out=%d dim=%d alpha=%g params=%d",
                self.kind,
                t.name,
                t.in_features,
                t.out_features,
                t.dim,
                t.alpha,
                t.params,
            )
        for name, pattern in self.selection.excluded:
            logger.info("excluded %s by %r", name, pattern)
        logger.info(
            "%s: %d modules wrapped, %d excluded",
            self.kind.upper() if self.kind != "lora" else "LoRA",
            len(self.loras),
            len(self.selection.excluded),
        )
