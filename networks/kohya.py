"""A foreign `--network_module` (not one of ours: `lycoris.kohya`, a kohya/musubi-style networks module) called
through the kohya interface exactly as musubi-tuner calls it, behind `KohyaNetwork`: the rest of the trainer
(saving with our metadata, resume, optimizer groups, --list_lora_targets, the memory estimate) sees the same
interface as our networks.

As in musubi-tuner's trainer: --network_args become a dict of STRINGS (the module parses them; our strict
checking does not apply), `create_arch_network(1.0, dim, alpha, vae, None, transformer, neuron_dropout=...,
**kwargs)` if the module has it, else `create_network(1.0, dim, alpha, vae, None, transformer, **kwargs)`
(LyCORIS), `prepare_network(args)` where the module defines it, `apply_to(None, transformer,
apply_text_encoder=False, apply_unet=True)` at once, and `prepare_optimizer_params(unet_lr=lr)`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .base import LoRASpec, Target, lora_name_for
from .max_norm import MaxNormFigures
from .network_args import NetworkArgs, NetworkArgsError, short
from .options import NetworkOptions
from .selection import Selection

logger = logging.getLogger(__name__)


def network_kwargs(module_name: str, items: Sequence[str]) -> dict[str, str]:
    """--network_args as musubi-tuner hands them to a foreign module: {key: value string}, unparsed."""
    kwargs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NetworkArgsError(
                f"network_args item {short(repr(item))}: expected key=value (for {module_name}, e.g. algo=lokr)"
            )
        kwargs[key.strip()] = value
    return kwargs


class KohyaNetwork(nn.Module):
    """A foreign network, applied to `model` when built (as musubi-tuner applies it at once: LyCORIS registers
    its modules, and so has weights to load or save, only then)."""

    full_delta = False  # unknown: the memory estimate counts it as LoRA

    def __init__(
        self,
        module: ModuleType,
        options: NetworkOptions,
        model: nn.Module,
        device: torch.device | str,
        run_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = options.network_module
        self.network_module: str = name
        kwargs = network_kwargs(name, options.network_args)
        dim, alpha = options.network_dim, options.network_alpha
        arch = callable(getattr(module, "create_arch_network", None))
        if not arch and options.network_dropout is not None:  # musubi-tuner drops it here without a word
            raise NetworkArgsError(
                f"--network_dropout: {name} has no create_arch_network, and its create_network takes no "
                "neuron_dropout (musubi-tuner ignores the option there); give its own key in --network_args "
                "(LyCORIS: dropout=0.1)"
            )
        try:
            if arch:
                inner = module.create_arch_network(
                    1.0, dim, alpha, None, None, model, neuron_dropout=options.network_dropout, **kwargs
                )
            else:
                inner = module.create_network(1.0, dim, alpha, None, None, model, **kwargs)
        except (ValueError, TypeError, KeyError, AssertionError, OSError) as e:  # its own checks of its args
            raise NetworkArgsError(
                f"--network_module {name} refused --network_args {' '.join(options.network_args)}: "
                f"{type(e).__name__}: {short(' '.join(str(e).split()) or 'no message')}"
            ) from None
        if inner is None:
            raise NetworkArgsError(f"--network_module {name}: its create_network returned no network")
        if hasattr(module, "prepare_network"):  # musubi-tuner asks the module, then calls the network
            inner.prepare_network(argparse.Namespace(**(run_options or {})))
        inner.apply_to(None, model, apply_text_encoder=False, apply_unet=True)
        if torch.device(device).type != "meta":
            inner.to(device)
        self.inner = inner
        self._model = [model]  # not a submodule: its weights are not the network's
        ratio = _float_or_none(kwargs.get("loraplus_lr_ratio"))
        self.spec = LoRASpec(
            1.0, dim or 4, alpha, options.network_dropout, NetworkArgs(loraplus_lr_ratio=ratio)
        )
        by_lora_name = {lora_name_for(n): n for n, _ in model.named_modules() if n}
        self.loras = list(self._foreign_modules())
        self.module_names = [
            by_lora_name.get(str(lora.lora_name), str(lora.lora_name)) for lora in self.loras
        ]
        known = set(by_lora_name.values())
        linears = [(n, model.get_submodule(n)) for n in self.module_names if n in known]
        self.selection = Selection(tuple((n, m) for n, m in linears if isinstance(m, nn.Linear)), ())
        logger.info("%s: %d modules wrapped", name, len(self.loras))

    def _foreign_modules(self) -> Iterator[Any]:
        loras = getattr(self.inner, "unet_loras", None)
        if loras is None:
            loras = [m for m in self.inner.modules() if hasattr(m, "lora_name")]
        yield from loras

    # --- the interface our trainer uses --------------------------------------------------------------------

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # the foreign module's own keys, no prefix
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    def apply_to(self, model: nn.Module) -> None:
        if model is not self._model[0]:
            raise ValueError(f"this {self.network_module} network was built for another model")

    def restore(self) -> None:
        for lora in reversed(self.loras):
            if callable(getattr(lora, "restore", None)):
                lora.restore()

    def set_multiplier(self, multiplier: float) -> None:
        self.inner.set_multiplier(multiplier)

    def prepare_optimizer_params(self, lr: float) -> list[dict[str, Any]]:
        """The module's groups, called as musubi-tuner calls them (unet_lr=...), each given our "kind": "lora",
        "lora_plus" for a LoRA+ group ("plus" in its description), else the description."""
        result = self.inner.prepare_optimizer_params(unet_lr=lr)
        groups, descriptions = result if isinstance(result, tuple) else (result, [""] * len(result))
        if callable(getattr(self.inner, "prepare_grad_etc", None)):
            self.inner.prepare_grad_etc(self._model[0])
        out = []
        for i, (group, description) in enumerate(zip(groups, descriptions, strict=True)):
            group = group if isinstance(group, dict) else {"params": group}
            words = str(description or "").split()
            kind = "lora_plus" if "plus" in words else "lora" if i == 0 else f"group{i}_{'_'.join(words)}"
            out.append({**group, "params": list(group["params"]), "lr": group.get("lr", lr), "kind": kind})
        return out

    def apply_max_norm_regularization(self, max_norm: float, device: torch.device | str) -> MaxNormFigures:
        """kohya's (keys scaled, mean norm, max norm), as the figures networks.lora reports."""
        keys, mean, largest = self.inner.apply_max_norm_regularization(max_norm, device)
        return MaxNormFigures(int(keys), float(mean), float(largest))

    def targets(self) -> list[Target]:
        out = []
        for name, lora in zip(self.module_names, self.loras, strict=True):
            linear = self._model[0].get_submodule(name) if name != str(lora.lora_name) else None
            shape = tuple(getattr(lora, "shape", ()))
            dim = int(getattr(lora, "lora_dim", 0) or 0)
            alpha = getattr(lora, "alpha", dim)
            out.append(
                Target(
                    name,
                    str(lora.lora_name),
                    int(getattr(linear, "in_features", shape[1] if len(shape) > 1 else 0)),
                    int(getattr(linear, "out_features", shape[0] if shape else 0)),
                    dim,
                    _number(alpha, default=dim),
                    sum(p.numel() for p in lora.parameters()),
                )
            )
        return out


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _number(value: Any, default: float) -> float:
    """A foreign module's alpha (a buffer, a number, or a tensor without values on meta) as a float."""
    if isinstance(value, torch.Tensor):
        return default if value.is_meta or value.numel() != 1 else float(value.float())
    return float(value) if isinstance(value, (int, float)) else default
