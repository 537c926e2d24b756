"""Fuzzing every parser of user input: each either parses or raises the project's own one-line user error
(never another exception type, never a hang). Modest example counts: the module runs in seconds."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset import schema
from dataset.config import load_dataset_config
from dataset.errors import DatasetConfigError
from generation.prompts import PromptDefaults, load_prompts, parse_prompt_line
from hunyuan_model.checkpoint import read_state_dict
from hunyuan_model.errors import CheckpointError
from hv_common.errors import UserError
from lora_files.errors import LoRAFileError
from lora_files.io import read_safetensors
from networks.network_args import KNOWN_KEYS, NetworkArgsError, parse_network_args
from training.args import build_parser
from training.config_file import read_config_file

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line(error: Exception) -> None:
    assert "\n" not in str(error) and str(error).strip(), repr(error)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with one captioned image (a dataset that exists) that every example overwrites its file in."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz")
    (root / "img").mkdir()
    Image.new("RGB", (32, 32)).save(root / "img" / "a.png")
    (root / "img" / "a.txt").write_text("a cat")
    return root


# ---------------------------------------------------------------- TOML-ish values, plausible but often wrong

SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 16, 64, 17, -1, 2**63 - 1, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(
        ["img", "nope", "", "img/a.png", ".txt", "head", "chunk", "slide", "uniform", "full", "\0"]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _toml_text(doc: dict) -> str | None:
    try:
        return toml.dumps(doc)
    except Exception:  # toml cannot write every value (mixed-type arrays, ...): try another example
        return None


DATASET_KEY_NAMES = sorted(schema.DATASET_KEYS) + ["colour", "Resolution"]
DATASET_TABLES = st.dictionaries(st.sampled_from(DATASET_KEY_NAMES), VALUES, max_size=5)
DATASET_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "general": st.dictionaries(
            st.sampled_from(sorted(schema.GENERAL_KEYS) + ["image_directory"]), VALUES, max_size=4
        ),
        "datasets": st.lists(DATASET_TABLES, max_size=3) | VALUES,
        "validation_datasets": st.lists(DATASET_TABLES, max_size=2),
        "extra": VALUES,
    },
)
TOML_NOISE = st.text(alphabet="[]{}=.\"'#\n ,abcT01-+:e_\\ut", max_size=40)


def _check_dataset_text(work: Path, text: str | bytes) -> None:
    path = work / "dataset.toml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    try:
        load_dataset_config(path, base_dir=work)
    except DatasetConfigError as e:
        _one_line(e)


@FUZZ
@given(doc=DATASET_DOCS)
def test_dataset_toml_from_structured_documents(work, doc):
    text = _toml_text(doc)
    if text is not None:
        _check_dataset_text(work, text)


@FUZZ
@given(text=TOML_NOISE | st.binary(max_size=40))
def test_dataset_toml_from_random_text(work, text):
    _check_dataset_text(work, text)


# ---------------------------------------------------------------- --config_file

PARSER = build_parser()
OPTION_NAMES = sorted(a.dest for a in PARSER._actions if a.option_strings and a.dest != "help")
CONFIG_DOCS = st.dictionaries(
    st.sampled_from(OPTION_NAMES) | st.sampled_from(["learnig_rate", "optimizer", "network"]),
    VALUES,
    max_size=4,
)


@FUZZ
@given(doc=CONFIG_DOCS, noise=TOML_NOISE)
def test_config_toml_parses_or_is_a_user_error(work, doc, noise):
    for text in (_toml_text(doc), noise):
        if text is None:
            continue
        path = work / "config.toml"
        path.write_text(text)
        try:
            read_config_file(str(path), PARSER)
        except (UserError, NetworkArgsError) as e:
            _one_line(e)


# ---------------------------------------------------------------- --network_args

ITEM_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "True",
            "4",
            "0.5",
            "[r'.*']",
            "{r'.*': 4}",
            "[r'(.*)*x']",
            "[r'(']",
            "1e999",
            "-1",
            "__import__('os')",
            "[" * 40,
            "{'a': 1, 'a': 2}",
            "b'x'",
            "9**99",
        ]
    ),
)
ITEMS = st.builds(
    lambda k, v: f"{k}={v}", st.sampled_from([*KNOWN_KEYS, "verbos", ""]), ITEM_VALUES
) | st.text(max_size=20)


@FUZZ
@given(items=st.lists(ITEMS, max_size=4))
def test_network_args_parse_or_are_a_network_args_error(items):
    try:
        parse_network_args(items)
    except NetworkArgsError as e:
        _one_line(e)


# ---------------------------------------------------------------- --sample_prompts

OPTIONS = st.sampled_from(["w", "h", "f", "d", "s", "g", "fs", "l", "n", "W", "zz", ""])
OPTION_VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "1e999", "1_6", "0x10", "", " "]),
)
PROMPT_LINES = st.builds(
    lambda text, opts: text + "".join(f" --{o} {v}" for o, v in opts),
    st.text(max_size=15),
    st.lists(st.tuples(OPTIONS, OPTION_VALUES), max_size=4),
)


@FUZZ
@given(line=PROMPT_LINES | st.text(max_size=30))
def test_prompt_lines_parse_or_are_a_user_error(line):
    try:
        parse_prompt_line(line, PromptDefaults(), 0, "prompts.txt:1")
    except UserError as e:
        _one_line(e)


PROMPT_TABLES = st.lists(
    st.dictionaries(
        st.sampled_from(["prompt", "width", "seed", "steps", "guidance_scale", "negative", "x"]),
        VALUES,
        max_size=4,
    )
    | VALUES,
    max_size=3,
)


@FUZZ
@given(entries=PROMPT_TABLES, noise=TOML_NOISE, suffix=st.sampled_from([".json", ".toml", ".txt"]))
def test_prompt_files_load_or_are_a_user_error(work, entries, noise, suffix):
    path = work / f"prompts{suffix}"
    structured = json.dumps(entries) if suffix == ".json" else _toml_text({"prompt": entries})
    for text in (structured, noise):
        if text is None:
            continue
        path.write_text(text)
        try:
            load_prompts(path)
        except UserError as e:
            _one_line(e)


# ---------------------------------------------------------------- safetensors headers

DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "F33", "", 3])
TENSOR_ENTRIES = st.fixed_dictionaries(
    {},
    optional={
        "dtype": DTYPES,
        "shape": st.lists(st.integers(min_value=-2, max_value=2**33), max_size=3) | VALUES,
        "data_offsets": st.lists(st.integers(min_value=-2, max_value=80), min_size=2, max_size=2) | VALUES,
    },
)
HEADERS = st.dictionaries(
    st.sampled_from(
        ["w", "lora_unet_double_blocks_0_img_attn_proj.alpha", "__metadata__", "img_in.proj.weight"]
    ),
    TENSOR_ENTRIES | VALUES,
    max_size=3,
)


@FUZZ
@given(
    header=HEADERS, data=st.binary(max_size=80), lie=st.none() | st.integers(min_value=0, max_value=2**64 - 1)
)
def test_safetensors_headers_read_or_are_a_file_error(work, header, data, lie):
    text = json.dumps(header).encode()
    path = work / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if lie is None else lie) + text + data)
    for meta in (True, False):
        try:
            read_state_dict(path, meta=meta)
        except CheckpointError as e:
            _one_line(e)
    try:
        read_safetensors(path)
    except LoRAFileError as e:
        _one_line(e)
