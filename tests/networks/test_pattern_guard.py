"""The pattern guard: `re`'s exact full-match results, computed in-process for patterns whose backtracking is
bounded and in a killable worker for all others; a runaway pattern is refused in one line, never a hang."""

from __future__ import annotations

import logging
import re

import pytest

from hunyuan_model.config import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES
from networks import pattern_guard
from networks.network_args import MAX_PATTERNS, NetworkArgsError, has_nested_repeat, parse_network_args
from networks.pattern_guard import SAFE_PATHS, backtrack_paths, is_provably_fast, match_sets
from networks.selection import UNMATCHED_DETAIL, find_candidates, warn_unmatched
from training.list_targets import meta_model

TWENTY_STARS = ".*" * 20 + "Z"


@pytest.fixture(scope="module")
def names() -> list[str]:
    """The 320 candidate module names of the 720p model (built on the meta device: no weights)."""
    return [name for name, _ in find_candidates(meta_model(None), TARGET_BLOCK_CLASSES)]


# musubi-tuner's documented patterns and ours, plus shapes whose bound is not small but which finish: each must
# select exactly what `re.fullmatch` selects, wherever the guard matched it.
ORDINARY = [
    r".*single_blocks.*",
    r".*double_blocks\.[0-9]\..*",
    r".*single_blocks\.\d{2}\.linear.*",
    r".*(img_mod|txt_mod|modulation).*",
    r"double_blocks.1.*",
    r".*img_attn_(qkv|proj)",
    r"(?i).*IMG_MLP.*",
    r".*(?<!txt_)mlp\.fc[12]",
    r"(?=.*single).*linear1",
    r"single_blocks",  # matches nothing (full match)
    r".*a.*b.*c.*",  # over the in-process bound (61**4 paths on 60-character names): the worker answers
    r"(?:double|single)_blocks\.(?:1|2)+\..*",
    r"(?:ab|cd|do)*.*",  # an alternation under a star: not provably fast, but fast
    r"(\w)\w*\.\d+\..*\1",  # a backreference
]


def test_match_sets_equal_re_fullmatch_in_process_and_in_the_worker(names):
    table = match_sets([("exclude_patterns", p) for p in ORDINARY], names)
    for pattern in ORDINARY:
        assert table[pattern] == {n for n in names if re.fullmatch(pattern, n)}, pattern
    fast = [p for p in ORDINARY if is_provably_fast(p, names)]
    assert len(fast) >= 8 and len(fast) < len(ORDINARY)  # both paths are exercised


def test_the_worker_alone_gives_re_results(names, monkeypatch):
    monkeypatch.setattr(pattern_guard, "SAFE_PATHS", 0)  # every pattern goes to the worker process
    table = match_sets([("include_patterns", p) for p in ORDINARY], names)
    for pattern in ORDINARY:
        assert table[pattern] == {n for n in names if re.fullmatch(pattern, n)}, pattern


@pytest.mark.parametrize(
    ("pattern", "fast"),
    [
        (r".*single_blocks.*", True),
        (DEFAULT_EXCLUDE_PATTERNS[0], True),
        (r"double_blocks\.\d+\.img_attn_qkv", True),
        (r"(.|.)*Z", False),
        (TWENTY_STARS, False),
        (r"(\w+\.?)+$", False),
        (r"(x)?(?(1)a|(.*)*Z)", False),
        (r"(?>(a|b|ab)*)c", False),  # inside an atomic group: still counted
    ],
)
def test_backtracking_bound(pattern, fast, names):
    assert is_provably_fast(pattern, names) is fast
    if not fast:
        assert backtrack_paths(pattern, 59) > SAFE_PATHS * 1000


@pytest.mark.parametrize("pattern", [r"(.|.)*Z", TWENTY_STARS, r"(.|.|.)*Z"])
def test_a_runaway_pattern_is_refused_in_one_line(pattern, names):
    with pytest.raises(NetworkArgsError) as info:
        match_sets([("exclude_patterns", "ok.*"), ("rank_patterns", pattern)], names)
    message = str(info.value)
    assert "\n" not in message and "network_args rank_patterns" in message and "refused" in message, message


def test_nested_repeat_is_found_inside_any_node():
    for pattern in [
        r"(x)?(?(1)a|(.*)*Z)",
        r"(x)?(?(1)(a+)+|b)",
        r"(?>(.*)*)Z",
        r"(?=(a+)+)a",
        r"(?!(\w+)*).",
    ]:
        assert has_nested_repeat(pattern), pattern
    for pattern in [r".*single_blocks.*", r"(x)?(?(1)a|.*Z)", r"(ab){2}(cd)*"]:
        assert not has_nested_repeat(pattern), pattern


@pytest.mark.parametrize("key", ["exclude_patterns", "rank_patterns"])
def test_more_patterns_than_the_cap_is_one_line(key):
    many = [f"'block{i}'" for i in range(MAX_PATTERNS + 1)]
    item = f"{key}=[{', '.join(many)}]" if key == "exclude_patterns" else f"{key}={{{': 4, '.join(many)}: 4}}"
    with pytest.raises(NetworkArgsError) as info:
        parse_network_args([item])
    assert f"{MAX_PATTERNS + 1} patterns; at most {MAX_PATTERNS}" in str(info.value)
    assert parse_network_args(
        [f"exclude_patterns=[{', '.join(many[:MAX_PATTERNS])}]"]
    )  # the cap itself is fine


def test_many_unmatched_patterns_are_one_summary_warning(names, caplog):
    patterns = [f"nothing_{i}" for i in range(MAX_PATTERNS)]
    table = match_sets([("exclude_patterns", p) for p in patterns], names)
    with caplog.at_level(logging.WARNING, logger="networks.selection"):
        unmatched = warn_unmatched("exclude_patterns", patterns, names, table)
    assert unmatched == patterns
    assert len(caplog.records) == UNMATCHED_DETAIL + 1
    assert (
        f"{MAX_PATTERNS - UNMATCHED_DETAIL} more patterns match no LoRA candidate"
        in caplog.records[-1].message
    )
    assert len(caplog.text) < 2000


def test_a_partial_match_hint_is_given_only_where_searching_is_safe(names, caplog):
    table = match_sets([("exclude_patterns", "single_blocks"), ("exclude_patterns", "Q(.|.)*Z")], names)
    with caplog.at_level(logging.WARNING, logger="networks.selection"):
        warn_unmatched("exclude_patterns", ["single_blocks", "Q(.|.)*Z"], names, table)
    first, second = (r.message for r in caplog.records)
    assert "only in part" in first and "closest module names" in second


def test_the_trainers_early_check_reads_only_our_modules_network_args():
    """Before the DiT loads, --network_args of networks.lora are checked; another module's are its own."""
    from training.args import parse_args
    from training.list_targets import check_patterns_early

    theirs = parse_args(["--network_module", "my.lycoris", "--network_args", "algo=loha", "preset=full"])
    check_patterns_early(theirs.network, theirs.model.dit)  # nothing to say: my.lycoris reads these itself
    with pytest.raises(NetworkArgsError, match="did not finish matching"):
        ours = parse_args(["--network_args", "exclude_patterns=[r'(.|.)*Z']"])
        check_patterns_early(ours.network, ours.model.dit)
