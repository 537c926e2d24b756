"""--include_patterns / --exclude_patterns / --exclude_single_blocks: which modules of each LoRA file are applied.

As in musubi-tuner, the i-th pattern of each option belongs to the i-th --lora_weight file (files past the
patterns are applied whole), and the order is: single blocks dropped, then include, then exclude. Unlike
musubi-tuner, which searches each key (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`) for the
regex, a pattern here must match a module's WHOLE name (`double_blocks.0.img_attn_qkv`), as the trainer's
--network_args patterns do: one rule for every pattern of the project (docs/options.md says so).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lora_files.io import LoadedLoRA
from networks.pattern_guard import is_provably_fast, match_sets

logger = logging.getLogger(__name__)

SINGLE_BLOCKS_PREFIX = "single_blocks."


@dataclass(frozen=True)
class ModuleFilter:
    """What one LoRA file keeps; the default keeps everything."""

    include: str | None = None
    exclude: str | None = None
    exclude_single_blocks: bool = False

    @property
    def keeps_all(self) -> bool:
        return self.include is None and self.exclude is None and not self.exclude_single_blocks


def filters_for(
    count: int, include: Sequence[str], exclude: Sequence[str], exclude_single_blocks: bool
) -> list[ModuleFilter]:
    """One filter per LoRA file: the i-th patterns to the i-th file (the options checked there are no more)."""
    return [
        ModuleFilter(
            include[i] if i < len(include) else None,
            exclude[i] if i < len(exclude) else None,
            exclude_single_blocks,
        )
        for i in range(count)
    ]


def _hint(pattern: str, names: Sequence[str]) -> str:
    """Why a pattern matched no module: most often a musubi-tuner pattern meant for searching keys."""
    if is_provably_fast(pattern, names, search=True) and any(re.search(pattern, n) for n in names):
        return (
            f"it matches module names only in part; patterns match the whole name here: try '.*{pattern}.*'"
        )
    return f"module names look like {names[0]}" if names else "the file has no module left to match"


def kept_modules(names: Sequence[str], rule: ModuleFilter, source: str) -> list[str]:
    """The module names of one LoRA file that `rule` keeps (in the file's order), logged when it drops any."""
    if rule.keeps_all:
        return list(names)
    kept = [n for n in names if not (rule.exclude_single_blocks and n.startswith(SINGLE_BLOCKS_PREFIX))]
    for flag, pattern, keep_matches in (
        ("--include_patterns", rule.include, True),
        ("--exclude_patterns", rule.exclude, False),
    ):
        if pattern is None:
            continue
        matched = match_sets([(flag, pattern)], kept)[pattern]
        if not matched:
            logger.warning("%s %r matches no module of %s: %s", flag, pattern, source, _hint(pattern, kept))
        kept = [n for n in kept if (n in matched) == keep_matches]
    logger.info("%s: %d of %d LoRA modules applied after filtering", source, len(kept), len(names))
    if not kept:
        logger.warning("%s: no LoRA module left after filtering: the file changes nothing", source)
    return kept


def select(lora: LoadedLoRA, rule: ModuleFilter) -> LoadedLoRA:
    """The LoRA with only the modules `rule` keeps."""
    kept = kept_modules(list(lora.weights), rule, lora.path)
    return dataclasses.replace(lora, weights={name: lora.weights[name] for name in kept})
