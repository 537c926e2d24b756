"""`--network_args` parsing: typed values, and a one-line NetworkArgsError for every malformed input."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from networks.network_args import KNOWN_KEYS, NetworkArgs, NetworkArgsError, parse_network_args


def test_every_key_parses_to_its_type():
    args = parse_network_args(
        [
            "loraplus_lr_ratio=4",
            "exclude_patterns=[r'.*single_blocks.*', r'.*double_blocks\\.[0-9]\\..*']",
            " include_patterns = [r'.*single_blocks\\.\\d{2}\\.linear.*'] ",
            "verbose=True",
            "rank_dropout=0.1",
            "module_dropout=0",
            "rank_patterns={r'.*linear1': 8, r'.*single_blocks.*': 4}",
            "alpha_patterns={r'.*single_blocks.*': 2.5}",
        ]
    )
    assert args == NetworkArgs(
        loraplus_lr_ratio=4.0,
        exclude_patterns=(r".*single_blocks.*", r".*double_blocks\.[0-9]\..*"),
        include_patterns=(r".*single_blocks\.\d{2}\.linear.*",),
        verbose=True,
        rank_dropout=0.1,
        module_dropout=0.0,
        rank_patterns=((r".*linear1", 8), (r".*single_blocks.*", 4)),
        alpha_patterns=((r".*single_blocks.*", 2.5),),
    )
    assert isinstance(args.loraplus_lr_ratio, float)


@pytest.mark.parametrize("items", [None, [], ()])
def test_nothing_given_means_defaults(items):
    assert parse_network_args(items) == NetworkArgs()


def test_conv_keys_are_accepted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        args = parse_network_args(["conv_dim=4", "conv_alpha=1"])
    assert (args.conv_dim, args.conv_alpha) == (4, 1.0)
    assert "conv_dim" in caplog.text and "no convolution" in caplog.text


# (item, fragments the message must contain: the key or item, and what was expected)
MALFORMED = [
    ("loraplus_ratio=4", ["loraplus_ratio", "did you mean loraplus_lr_ratio?"]),
    ("exclude_pattern=[r'.*']", ["exclude_pattern", "did you mean exclude_patterns?"]),
    ("Verbose=True", ["Verbose", "did you mean verbose?"]),
    ("verbose", ["'verbose'", "missing '='"]),
    ("=4", ["'=4'", "empty key"]),
    ("  =4", ["empty key"]),
    ("verbose=", ["verbose", "missing value"]),
    ("verbose=true", ["verbose", "did you mean verbose=True?"]),
    ("verbose=1", ["verbose=1", "True or False"]),
    ("verbose='True'", ["verbose", "True or False"]),
    ("loraplus_lr_ratio='4'", ["loraplus_lr_ratio='4'", "a number > 0"]),
    ("loraplus_lr_ratio=0", ["loraplus_lr_ratio=0", "a number > 0"]),
    ("loraplus_lr_ratio=-2", ["loraplus_lr_ratio=-2", "a number > 0"]),
    ("loraplus_lr_ratio=True", ["loraplus_lr_ratio=True", "a number > 0"]),
    ("loraplus_lr_ratio=1e999", ["loraplus_lr_ratio=inf", "a number > 0"]),
    ("loraplus_lr_ratio=four", ["loraplus_lr_ratio='four'", "not a Python literal"]),
    ("rank_dropout=1", ["rank_dropout=1", "[0, 1)"]),
    ("module_dropout=-0.1", ["module_dropout=-0.1", "[0, 1)"]),
    ("module_dropout=[0.1]", ["module_dropout=[0.1]", "[0, 1)"]),
    ("conv_dim=2.5", ["conv_dim=2.5", "an integer > 0"]),
    ("exclude_patterns='.*single_blocks.*'", ["exclude_patterns", "not a string", "[r'.*single_blocks.*']"]),
    ("exclude_patterns=.*single_blocks.*", ["exclude_patterns", "not a Python literal", "[r'"]),
    ("include_patterns=r'.*'", ["include_patterns", "not a string"]),
    ("include_patterns=[1]", ["include_patterns=1", "string"]),
    ("include_patterns={'a': 1}", ["include_patterns", "a list of regex strings"]),
    ("exclude_patterns=['(']", ["exclude_patterns", "invalid regex '('", "missing )"]),
    ("include_patterns=[r'.*[a-']", ["include_patterns", "invalid regex", "unterminated character set"]),
    ("rank_patterns=[8]", ["rank_patterns=[8]", "a dict of regex -> number"]),
    ("rank_patterns={r'.*': 8.5}", ["rank_patterns", "8.5", "an integer > 0"]),
    ("rank_patterns={r'.*': 0}", ["rank_patterns", "an integer > 0"]),
    ("rank_patterns={r'(': 8}", ["rank_patterns", "invalid regex"]),
    ("rank_patterns={'.*a': 8, '.*a': 4}", ["rank_patterns", "'.*a' is given twice"]),
    ("alpha_patterns={r'.*': 'x'}", ["alpha_patterns", "a number > 0"]),
    ("alpha_patterns=.*: 4", ["alpha_patterns", "not a Python literal", "dict"]),
    ("verbose=__import__('os').system('echo pwned')", ["verbose", "not a Python literal"]),
    ("verbose=[" * 3000, ["verbose", "not a Python literal"]),
]


@pytest.mark.parametrize(("item", "fragments"), MALFORMED, ids=[m[0][:40] for m in MALFORMED])
def test_malformed_item_is_one_line_error(item, fragments):
    with pytest.raises(NetworkArgsError) as info:
        parse_network_args([item])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_key_given_twice_is_an_error():
    with pytest.raises(NetworkArgsError, match="verbose is given twice"):
        parse_network_args(["verbose=True", "verbose=False"])


@pytest.mark.parametrize("items", ["verbose=True", 42, [42]])
def test_items_must_be_a_list_of_strings(items):
    with pytest.raises(NetworkArgsError, match="expected"):
        parse_network_args(items)


def test_nothing_in_a_value_is_executed(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(NetworkArgsError):
        parse_network_args([f"rank_patterns={{open({str(marker)!r}, 'w'): 1}}"])
    assert not marker.exists()


def test_error_is_a_value_error_and_one_line_even_for_multiline_input():
    with pytest.raises(ValueError) as info:
        parse_network_args(["verbose=\nTrue\nFalse"])
    assert isinstance(info.value, NetworkArgsError)
    assert "\n" not in str(info.value)


# --- property: random strings only ever give a NetworkArgs or a one-line NetworkArgsError -------------

VALUE_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\[?(r?'[^'\n]{0,12}',? ?){0,3}\]?", fullmatch=True),
    st.from_regex(r"\{(r?'[^'\n]{0,8}': ?-?\d{1,3}(\.\d)?,? ?){0,3}\}", fullmatch=True),
    st.sampled_from(
        ["True", "False", "true", "None", "0", "1", "0.5", "-1", "1e999", "nan", "[]", "{}", "()"]
    ),
    st.builds(repr, st.one_of(st.floats(), st.integers(), st.booleans(), st.lists(st.text(max_size=8)))),
)
ITEM = st.one_of(
    st.text(max_size=60),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KNOWN_KEYS), VALUE_TEXT),
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=20), VALUE_TEXT),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(ITEM, max_size=4))
def test_parser_gives_a_result_or_its_own_error(items):
    try:
        args = parse_network_args(items)
    except NetworkArgsError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(args, NetworkArgs)
    if args.loraplus_lr_ratio is not None:
        assert math.isfinite(args.loraplus_lr_ratio) and args.loraplus_lr_ratio > 0
    for p in (args.rank_dropout, args.module_dropout):
        assert p is None or 0 <= p < 1
    assert all(isinstance(p, str) for p in args.exclude_patterns + args.include_patterns)
    assert all(isinstance(r, int) and r > 0 for _, r in args.rank_patterns)


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(min_value=1e-6, max_value=1e6),
    patterns=st.lists(st.sampled_from([r".*single_blocks.*", r".*\.linear[12]", r"double_blocks\.1\d\..*"])),
    rank=st.integers(min_value=1, max_value=512),
)
def test_valid_values_round_trip(ratio, patterns, rank):
    args = parse_network_args(
        [f"loraplus_lr_ratio={ratio!r}", f"exclude_patterns={patterns!r}", f"rank_patterns={{r'.*': {rank}}}"]
    )
    assert args.loraplus_lr_ratio == ratio
    assert args.exclude_patterns == tuple(patterns)
    assert args.rank_patterns == ((".*", rank),)


def test_a_pattern_without_r_prefix_keeps_its_backslash_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Python warns about '\.' in a plain string literal; we do not
        args = parse_network_args([r"exclude_patterns=['.*\.linear']"])
    assert args.exclude_patterns == (r".*\.linear",)
