"""What the pattern guard costs in the normal case: a few ordinary --network_args patterns on the 720p model.

    python bench/pattern_guard.py [--rounds 15]        (run it in a checkout: its networks/ package is timed)

Figures (medians over rounds, one process, CPU):
  create_s     create_network with the patterns below on the 720p meta model (320 candidates, LoRA weights on
               the meta device): selection, unmatched-pattern warnings, rank/alpha lookup, module creation.
               Compare it across checkouts (before/after a change of networks/)
  guard_s      match_sets alone (the pattern guard: the bound, then re.fullmatch over the 343 Linear names of the
               model), where the checkout has it
The last line printed is one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import nn  # noqa: E402

from hunyuan_model.config import get_preset  # noqa: E402
from hunyuan_model.model import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, build_dit  # noqa: E402
from networks.lora import create_network  # noqa: E402

ORDINARY = [
    "exclude_patterns=[r'.*single_blocks\\.(1|2)\\d\\..*', r'.*txt_mlp.*']",
    "include_patterns=[r'.*single_blocks\\.1\\d\\.linear1']",
    "rank_patterns={r'.*img_attn.*': 16, r'.*single_blocks.*': 8}",
    "alpha_patterns={r'.*img_mlp\\.fc[12]': 4}",
]


def _seconds(model, network_args: list[str]) -> float:
    start = time.perf_counter()
    create_network(1.0, 4, 1.0, model, target_block_classes=TARGET_BLOCK_CLASSES,
                   default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS, network_args=network_args, device="meta")  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    model = build_dit(get_preset("hunyuan-video-t2v-720p"), device="meta")
    _seconds(model, ORDINARY)  # warm: imports, re's compile cache
    figures = {"create_s": statistics.median(_seconds(model, ORDINARY) for _ in range(rounds))}
    try:
        from networks.lora import user_patterns
        from networks.network_args import parse_network_args
        from networks.pattern_guard import match_sets
    except ImportError:  # a checkout from before the guard
        match_sets = None
    if match_sets is not None:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        keyed = [
            *user_patterns(parse_network_args(ORDINARY)),
            *(("default", p) for p in DEFAULT_EXCLUDE_PATTERNS),
        ]
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            match_sets(keyed, names)
            times.append(time.perf_counter() - start)
        figures["guard_s"] = statistics.median(times)
    print(json.dumps({k: round(v, 5) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
