"""Which Linears a LoRA wraps: candidates inside the target blocks, then exclude, then include (a rescue).

Names are the model's qualified names (`double_blocks.0.img_attn_qkv`) and every pattern must match a
whole name (`re.fullmatch`), as the spec says. Include never restricts: it only brings back excluded names.
Patterns meet names once, in `pattern_guard.match_sets` (which refuses a pattern that would backtrack for
hours); everything here works on those sets.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from .network_args import NetworkArgsError, short
from .pattern_guard import is_provably_fast

Matches = dict[str, frozenset[str]]  # pattern -> the names it fully matches (pattern_guard.match_sets)
UNMATCHED_DETAIL = 3  # patterns per key that get their own warning and hint; the rest share one line

logger = logging.getLogger(__name__)

_Value = TypeVar("_Value")


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


def first_match(pairs: Iterable[tuple[str, _Value]], name: str, matches: Matches) -> _Value | None:
    """The value of the first (pattern, value) whose pattern fully matches `name`, or None."""
    for pattern, value in pairs:
        if name in matches[pattern]:
            return value
    return None


def select(
    candidates: Sequence[tuple[str, nn.Linear]],
    exclude: Sequence[str],
    include: Sequence[str],
    matches: Matches,
) -> Selection:
    targets, excluded = [], []
    for name, module in candidates:
        by = first_match([(p, p) for p in exclude], name, matches)
        if by is not None and first_match([(p, p) for p in include], name, matches) is None:
            excluded.append((name, str(by)))
        else:
            targets.append((name, module))
    return Selection(tuple(targets), tuple(excluded))


def _nearest_hint(pattern: str, names: Sequence[str]) -> str:
    """Why a pattern matched nothing: usually a partial pattern (full match!), else show the nearest names."""
    partial = []
    if is_provably_fast(pattern, names, search=True):  # search tries every start: only where that is safe
        partial = [n for n in names if re.search(pattern, n)]
    if partial:
        return (
            f"it matches {len(partial)} names only in part (e.g. {partial[0]}); patterns must match the "
            f"whole name: try r'.*{pattern}.*'"
        )
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.0)
    return f"closest module names: {', '.join(close)}"


def warn_unmatched(key: str, patterns: Iterable[str], names: Sequence[str], matches: Matches) -> list[str]:
    """Warn about patterns that fully match none of `names` (each of the first few with a hint, the rest in one
    line: 10,000 such patterns are one warning, not megabytes of them); return those patterns."""
    unmatched = [p for p in patterns if not matches[p]]
    for pattern in unmatched[:UNMATCHED_DETAIL]:
        logger.warning(
            "network_args %s pattern %s matches no LoRA candidate module; %s",
            key,
            short(repr(pattern)),
            _nearest_hint(pattern, names),
        )
    rest = unmatched[UNMATCHED_DETAIL:]
    if rest:
        shown = ", ".join(short(repr(p), 60) for p in rest[:3])
        logger.warning(
            "network_args %s: %d more patterns match no LoRA candidate module (%s%s)",
            key,
            len(rest),
            shown,
            ", ..." if len(rest) > 3 else "",
        )
    return unmatched
