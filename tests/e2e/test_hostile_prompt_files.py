"""Hostile --sample_prompts files (.txt, .json, .toml): one-line errors from the shared parser, and the trainer
refuses them before writing anything.
"""

from __future__ import annotations

import pytest
from hostile_files import DEMO_TOML
from hostile_files import refused as _refused

import hv_train_network

pytestmark = pytest.mark.usefixtures("restore_logging")


# ---------------------------------------------------------------- --sample_prompts files

PROMPTS: dict[str, tuple[str | bytes, str]] = {
    "p.txt bad flag": ("a cat --w abc\n", "--w 'abc': expected a width"),
    "p.txt huge number": ("a cat --w 99999999999999999999999\n", "expected a width"),
    "p.txt 5000 digits": ("a cat --d " + "9" * 5000 + "\n", "characters)"),
    "p.txt 1e999": ("a cat --g 1e999\n", "--g"),
    "p.txt unknown flag": ("a cat --zz 3\n", "unknown option --zz"),
    "p.txt binary junk": (bytes(range(256)) * 20, "cannot read it"),
    "p.json deep nesting": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "p.json 5000-digit seed": ('[{"prompt": "a", "seed": ' + "9" * 5000 + "}]", "not valid JSON"),
    "p.json inf width": ('[{"prompt": "a", "width": 1e999}]', "'width' inf"),
    "p.toml parser IndexError": ("T .", "not valid TOML"),
    "p.toml deep array": ("prompt = " + "[" * 3000 + "]" * 3000, "not valid TOML"),
    "p.toml prompt not a string": ("[[prompt]]\nprompt = 3\n", "needs a 'prompt' string"),
}


@pytest.mark.parametrize("case", list(PROMPTS), ids=list(PROMPTS))
def test_prompt_file_hostile(case, tmp_path):
    """The parser the trainer and the sampler share, on each file (the trainer itself: test below)."""
    from generation.prompts import load_prompts
    from hv_common.errors import UserError

    body, fragment = PROMPTS[case]
    path = tmp_path / case.split()[0]
    (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message and len(message) < 1000, message[:300]


def test_trainer_refuses_a_bad_prompt_file_before_writing(cached_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(cached_demo)
    out = tmp_path / "out"
    for name in ("p.txt bad flag", "p.json deep nesting"):
        body, fragment = PROMPTS[name]
        prompts = tmp_path / name.split()[0]
        prompts.write_text(body)
        argv = [
            "--config_file",
            DEMO_TOML,
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            "demo/dataset.toml",
            "--output_dir",
            str(out),
            "--sample_prompts",
            str(prompts),
            "--vae",
            "models/vae",
            "--text_encoder1",
            "models/text_encoder",
            "--text_encoder2",
            "models/text_encoder_2",
            "--max_train_steps",
            "1",
        ]
        _refused(capsys, hv_train_network.main(argv), fragment, logs=True)
    assert not out.exists()  # not even an empty output folder
