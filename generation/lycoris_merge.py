"""--lycoris: LoRA files merged into the DiT by the LyCORIS library (LoHa, LoKr, LoCon and plain LoRA modules),
as musubi-tuner's hv_generate_video.py does, with each file's --include_patterns / --exclude_patterns first.

Every file is read and checked against the DiT's module names before the DiT loads: LyCORIS itself skips a
module it cannot find without a word, which would make a LoRA for another model change nothing, silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from generation.lora_selection import ModuleFilter, kept_modules
from lora_files.errors import LoRAFileError
from lora_files.io import read_safetensors
from networks.lora import lora_name_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LycorisFile:
    path: str
    tensors: dict[str, torch.Tensor]  # the file's keys, only those of the modules kept
    multiplier: float


def _module_of_key(key: str) -> str:
    return key.split(".", 1)[0]


def load_lycoris_files(
    files: Sequence[str], multipliers: Sequence[float], filters: Sequence[ModuleFilter], model: nn.Module
) -> list[LycorisFile]:
    """Read each file, check its modules are the DiT's (`model` may be on the meta device), apply the filter."""
    by_lora_name = {lora_name_for(name): name for name, _ in model.named_modules() if name}
    loaded = []
    for path, multiplier, rule in zip(files, multipliers, filters, strict=True):
        tensors, _ = read_safetensors(path)
        lora_names = sorted({_module_of_key(k) for k in tensors})
        unknown = [n for n in lora_names if n not in by_lora_name]
        if unknown:
            raise LoRAFileError(
                f"LoRA file {path}: {len(unknown)} modules are not the DiT's (e.g. {unknown[0]}; --lycoris reads "
                "keys lora_unet_<module path>.*; a LoRA for another model?)"
            )
        kept = set(kept_modules([by_lora_name[n] for n in lora_names], rule, path))
        tensors = {k: v for k, v in tensors.items() if by_lora_name[_module_of_key(k)] in kept}
        logger.info("%s: %d LyCORIS modules, multiplier %g", path, len(kept), multiplier)
        loaded.append(LycorisFile(path, tensors, multiplier))
    return loaded


@torch.no_grad()
def merge_lycoris(model: nn.Module, files: Sequence[LycorisFile]) -> None:
    """Fold each file into the model's weights with LyCORIS's kohya entry point, as musubi-tuner does (but with
    the multiplier applied)."""
    from lycoris.kohya import create_network_from_weights  # type: ignore[import-untyped]  # no stubs

    for file in files:
        if not file.tensors:
            continue  # nothing kept: LyCORIS would build an empty network
        network, _ = create_network_from_weights(
            multiplier=file.multiplier,
            file=None,
            vae=None,
            text_encoder=None,
            unet=model,
            weights_sd=file.tensors,
            for_inference=True,
        )
        # Each module merged at the file's multiplier: LyCORIS's network.merge_to merges at 1.0 whatever the
        # multiplier it was built with, so musubi-tuner's --lora_multiplier does nothing with --lycoris.
        for module in network.unet_loras:  # beside the weight it merges into (CPU memory with block swap)
            weight = module.org_module[0].weight
            module.to(weight.device).merge_to(file.multiplier)
        logger.info("%s: merged with LyCORIS at multiplier %g", file.path, file.multiplier)
