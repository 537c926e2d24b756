"""What the pattern guard costs in the normal case: a few ordinary --network_args patterns on the 720p model.

    python bench/pattern_guard.py [--rounds 30]

Figures (minimums over interleaved rounds, one process, CPU):
  re_ms         plain `re.fullmatch` of the patterns below (and the default exclusion) over the 343 Linear names
                of the 720p model: what matching cost before the guard
  guard_ms      `match_sets` on the same: the backtracking bound of each pattern, then the same matches
  guard_vs_re   guard_ms / re_ms
  create_s      create_network with these patterns on the 720p meta model (LoRA weights on the meta device):
                selection, unmatched-pattern warnings, rank/alpha lookup, module creation
The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hunyuan_model.config import get_preset  # noqa: E402
from hunyuan_model.model import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, build_dit  # noqa: E402
from networks.lora import create_network, user_patterns  # noqa: E402
from networks.network_args import parse_network_args  # noqa: E402
from networks.pattern_guard import match_sets  # noqa: E402

ORDINARY = [
    "exclude_patterns=[r'.*single_blocks\\.(1|2)\\d\\..*', r'.*txt_mlp.*']",
    "include_patterns=[r'.*single_blocks\\.1\\d\\.linear1']",
    "rank_patterns={r'.*img_attn.*': 16, r'.*single_blocks.*': 8}",
    "alpha_patterns={r'.*img_mlp\\.fc[12]': 4}",
]


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=30)
    rounds = parser.parse_args().rounds
    model = build_dit(get_preset("hunyuan-video-t2v-720p"), device="meta")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    keyed = [
        *user_patterns(parse_network_args(ORDINARY)),
        *(("default", p) for p in DEFAULT_EXCLUDE_PATTERNS),
    ]

    def plain() -> dict[str, frozenset[str]]:
        compiled = [(p, re.compile(p)) for _, p in keyed]
        return {p: frozenset(n for n in names if rx.fullmatch(n)) for p, rx in compiled}

    def create() -> None:
        create_network(
            1.0,
            4,
            1.0,
            model,
            target_block_classes=TARGET_BLOCK_CLASSES,
            default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
            network_args=ORDINARY,
            device="meta",
        )

    assert plain() == match_sets(keyed, names)  # the same answer, and warm caches for both
    re_s, guard_s = [], []
    for _ in range(rounds):  # interleaved: a busy machine slows both alike
        re_s.append(_timed(plain))
        guard_s.append(_timed(lambda: match_sets(keyed, names)))
    create_s = min(_timed(create) for _ in range(max(3, rounds // 5)))
    figures = {"re_ms": min(re_s) * 1e3, "guard_ms": min(guard_s) * 1e3}
    figures |= {"guard_vs_re": figures["guard_ms"] / figures["re_ms"], "create_s": create_s}
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
