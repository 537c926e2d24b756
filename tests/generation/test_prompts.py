"""`--sample_prompts` files: musubi-tuner's prompt lines, TOML and JSON tables, defaults, and clear errors."""

import json
import logging

import pytest

from generation.prompts import PromptDefaults, load_prompts
from hv_common.errors import UserError


def write(tmp_path, text: str, name: str = "prompts.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_option_of_a_prompt_line(tmp_path):
    path = write(
        tmp_path, "a cat walks --w 320 --h 192 --f 9 --d 7 --s 30 --g 4.5 --fs 7.0 --n ugly, blurry --l 5\n"
    )
    (p,) = load_prompts(path)
    assert p.text == "a cat walks"
    assert (p.width, p.height, p.frames, p.seed, p.steps) == (320, 192, 9, 7, 30)
    assert (p.guidance, p.flow_shift, p.cfg_scale, p.negative) == (4.5, 7.0, 5.0, "ugly, blurry")
    assert p.uses_cfg and p.index == 0 and p.where == f"{path}:1"


def test_defaults_are_musubi_tuners_and_the_caller_can_override_them(tmp_path):
    path = write(tmp_path, "a red ball\nthe same --W 128 --S 8\n")
    first, second = load_prompts(path)
    assert (first.width, first.height, first.frames, first.steps) == (256, 256, 1, 20)
    assert (first.guidance, first.flow_shift, first.seed) == (6.0, 14.5, 42)
    assert first.cfg_scale is None and first.negative is None and not first.uses_cfg
    assert (second.width, second.steps) == (128, 8)  # options are case-insensitive, as in musubi-tuner
    demo = PromptDefaults(width=64, height=64, frames=5, steps=4, seed=3)
    first, second = load_prompts(path, demo)
    assert (first.width, first.height, first.frames, first.steps, first.seed) == (64, 64, 5, 4, 3)
    assert (second.width, second.height, second.steps) == (128, 64, 8)


def test_comments_and_blank_lines_are_skipped_and_lines_are_numbered(tmp_path):
    path = write(tmp_path, "# previews\n\n   \na dog --d 1\n  # indented comment\na fox\n")
    prompts = load_prompts(path)
    assert [p.text for p in prompts] == ["a dog", "a fox"]
    assert [p.index for p in prompts] == [0, 1]
    assert [p.where for p in prompts] == [f"{path}:4", f"{path}:6"]


def test_sizes_and_frame_counts_are_rounded_as_musubi_does_but_said(tmp_path, caplog):
    path = write(tmp_path, "x --w 100 --h 250 --f 8\n")
    with caplog.at_level(logging.WARNING, logger="generation.prompts"):
        (p,) = load_prompts(path)
    assert (p.width, p.height, p.frames) == (96, 240, 5)
    text = caplog.text
    assert f"{path}:1: width 100 is not a multiple of 16; using 96" in text
    assert "height 250" in text and "8 frames is not 4k + 1; using 5" in text


def test_a_negative_prompt_without_cfg_scale_is_reported_unused(tmp_path, caplog):
    path = write(tmp_path, "x --n blurry\ny --n blurry --l 1.0\n")
    with caplog.at_level(logging.WARNING, logger="generation.prompts"):
        prompts = load_prompts(path)
    assert not any(p.uses_cfg for p in prompts)
    assert caplog.text.count("negative prompt is unused") == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x --ww 64", "unknown option --ww \\(did you mean 'w'\\?\\)"),
        ("x --steps 4", "unknown option --steps"),
        ("x --w abc", "--w 'abc': expected a width in pixels"),
        ("x --w 64.5", "--w '64.5'"),
        ("x --h -16", "--h '-16'"),
        ("x --f 0", "--f '0': expected a frame count"),
        ("x --d -1", "--d '-1': expected a seed"),
        ("x --s 0", "--s '0': expected a step count from 1 to 1000"),
        ("x --s 1001", "--s '1001'"),
        ("x --g nan", "--g 'nan': expected an embedded guidance scale"),
        ("x --fs 0", "--fs '0': expected a flow shift > 0"),
        ("x --l -2", "--l '-2': expected a CFG scale"),
        ("x --w", "--w has no value"),
        ("x --w 64 --w 128", "--w is given twice"),
        ("--w 64 a cat", "the line starts with '--w': the prompt text comes first"),
        ("x --w 8", "width 8: must be at least 16 pixels"),
    ],
)
def test_line_errors_name_the_file_line_and_option(tmp_path, line, message):
    path = write(tmp_path, f"# first\na fine prompt\n{line}\n")
    with pytest.raises(UserError, match=message) as info:
        load_prompts(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_prompts(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="no prompts in the file"):
        load_prompts(write(tmp_path, "# only a comment\n\n"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="cannot read it"):
        load_prompts(bad)


def test_musubi_toml_with_shared_defaults_and_subsets(tmp_path):
    path = write(
        tmp_path,
        '[prompt]\nwidth = 128\nsample_steps = 10\n\n[[prompt.subset]]\nprompt = "a cat"\n\n'
        '[[prompt.subset]]\nprompt = "a dog"\nwidth = 64\nframe_count = 5\nseed = 9\nguidance_scale = 3.5\n'
        'discrete_flow_shift = 5.0\ncfg_scale = 4.0\nnegative_prompt = "blurry"\n',
        "prompts.toml",
    )
    cat, dog = load_prompts(path)
    assert (cat.text, cat.width, cat.steps, cat.frames, cat.index) == ("a cat", 128, 10, 1, 0)
    assert (dog.text, dog.width, dog.steps, dog.frames, dog.seed, dog.index) == ("a dog", 64, 10, 5, 9, 1)
    assert (dog.guidance, dog.flow_shift, dog.cfg_scale, dog.negative) == (3.5, 5.0, 4.0, "blurry")


def test_toml_array_of_prompt_tables_with_our_short_names(tmp_path):
    path = write(
        tmp_path, '[[prompt]]\nprompt = "a"\nw = 32\nfs = 3.0\n\n[[prompt]]\nprompt = "b"\n', "p.toml"
    )
    a, b = load_prompts(path, PromptDefaults(height=32))
    assert (a.width, a.height, a.flow_shift) == (32, 32, 3.0)
    assert (b.width, b.text) == (256, "b")


def test_json_list_of_lines_and_tables(tmp_path):
    entries = ["a cat --w 64 --d 5", {"prompt": "a dog", "height": 96, "sample_steps": 3, "enum": 7}]
    a, b = load_prompts(write(tmp_path, json.dumps(entries), "p.json"))
    assert (a.text, a.width, a.seed, a.index) == ("a cat", 64, 5, 0)
    assert (b.text, b.height, b.steps, b.index) == ("a dog", 96, 3, 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "p.json",
            '[{"prompt": "a", "widht": 64}]',
            "entry 1: unknown key 'widht' \\(did you mean 'width'\\?\\)",
        ),
        ("p.json", '[{"prompt": "a", "width": "big"}]', "entry 1: 'width' 'big': expected a width"),
        ("p.json", '[{"prompt": "a", "seed": true}]', "entry 1: 'seed' True: expected a seed"),
        ("p.json", '["a", {"width": 64}]', "entry 2: needs a 'prompt' string"),
        ("p.json", '["a", 5]', "entry 2: expected a prompt line or a table, got int"),
        ("p.json", '["a --zz 1"]', "entry 1: unknown option --zz"),
        ("p.json", '{"prompts": []}', "expected a list of prompt tables"),
        ("p.json", '[\n{"prompt": "a",,}\n]', "p.json:2: not valid JSON"),
        ("p.toml", 'x = 1\n[[prompt]\nprompt = "a"\n', "p.toml:2: not valid TOML"),
        ("p.toml", "[prompt]\nwidth = 64\n", "needs a \\[\\[prompt.subset\\]\\]"),
        ("p.toml", "[[prompt]]\nprompt = 3\n", "entry 1: needs a 'prompt' string"),
        ("p.json", "[]", "no prompts in the file"),
    ],
)
def test_structured_file_errors(tmp_path, name, content, message):
    with pytest.raises(UserError, match=message):
        load_prompts(write(tmp_path, content, name))
