"""Which Linears a LoRA wraps: candidates inside the target blocks, then exclude, then include (a rescue).

Names are the model's qualified names (`double_blocks.0.img_attn_qkv`) and every pattern must match a
whole name (`re.fullmatch`), as the spec says. Include never restricts: it only brings back excluded names.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from .network_args import NetworkArgsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    targets: tuple[tuple[str, nn.Linear], ...]  # wrapped, in the model's module order
    excluded: tuple[tuple[str, str], ...]  # (name, the first exclude pattern that matched it)


def find_candidates(model: nn.Module, target_block_classes: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """Every Linear inside a module whose class name is one of `target_block_classes`, once, in model order."""
    classes = set(target_block_classes)
    found: dict[str, nn.Linear] = {}
    for block_name, block in model.named_modules():
        if type(block).__name__ not in classes:
            continue
        for child_name, child in block.named_modules():
            if isinstance(child, nn.Linear):
                found.setdefault(f"{block_name}.{child_name}" if block_name else child_name, child)
    if not found:
        raise NetworkArgsError(
            f"the model has no Linear inside blocks of class {', '.join(target_block_classes)}: nothing to wrap"
        )
    return list(found.items())


def first_match(pairs: Iterable[tuple[re.Pattern[str], object]], name: str) -> object | None:
    """The value of the first pattern that fully matches `name`, or None."""
    for pattern, value in pairs:
        if pattern.fullmatch(name):
            return value
    return None


def select(
    candidates: Sequence[tuple[str, nn.Linear]], exclude: Sequence[str], include: Sequence[str]
) -> Selection:
    exclude_re = [(re.compile(p), p) for p in exclude]
    include_re = [(re.compile(p), p) for p in include]
    targets, excluded = [], []
    for name, module in candidates:
        by = first_match(exclude_re, name)
        if by is not None and first_match(include_re, name) is None:
            excluded.append((name, str(by)))
        else:
            targets.append((name, module))
    return Selection(tuple(targets), tuple(excluded))


def _nearest_hint(pattern: str, names: Sequence[str]) -> str:
    """Why a pattern matched nothing: usually a partial pattern (full match!), else show the nearest names."""
    try:
        partial = [n for n in names if re.search(pattern, n)]
    except re.error:
        partial = []
    if partial:
        return (
            f"it matches {len(partial)} names only in part (e.g. {partial[0]}); patterns must match the "
            f"whole name: try r'.*{pattern}.*'"
        )
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.0)
    return f"closest module names: {', '.join(close)}"


def warn_unmatched(key: str, patterns: Iterable[str], names: Sequence[str]) -> list[str]:
    """Log a warning for each pattern that fully matches none of `names`; return those patterns."""
    unmatched = []
    for pattern in patterns:
        compiled = re.compile(pattern)
        if not any(compiled.fullmatch(n) for n in names):
            unmatched.append(pattern)
            logger.warning(
                "network_args %s pattern %r matches no LoRA candidate module; %s",
                key,
                pattern,
                _nearest_hint(pattern, names),
            )
    return unmatched
