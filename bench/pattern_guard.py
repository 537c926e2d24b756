"""What the pattern guard costs in the normal case: a few ordinary --network_args patterns on the 720p model.

    python bench/pattern_guard.py [--rounds 15]        (run it in a checkout: its networks/ package is timed)

Figures (medians over rounds, one process, CPU):
  select_s     the selection and rank/alpha lookup as create_network runs it: LoRANetwork on the 720p meta
               model (320 candidates, LoRA weights on the meta device) with the patterns below
  baseline_s   the same network without any --network_args: what building it costs with no pattern at all
  patterns_s   select_s - baseline_s: what the patterns add
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    model = build_dit(get_preset("hunyuan-video-t2v-720p"), device="meta")
    _seconds(model, ORDINARY)  # warm: imports, re's compile cache
    select, baseline = [], []
    for _ in range(rounds):  # interleaved: a busy machine slows both alike
        select.append(_seconds(model, ORDINARY))
        baseline.append(_seconds(model, []))
    figures = {"select_s": statistics.median(select), "baseline_s": statistics.median(baseline)}
    figures["patterns_s"] = figures["select_s"] - figures["baseline_s"]
    print(json.dumps({k: round(v, 5) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
