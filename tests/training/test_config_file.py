"""`--config_file x.toml`: options from a file, sections flatten, the command line wins, mistakes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hv_train_network
from hv_common.errors import UserError
from training.args import parse_args
from training.options import TrainConfig

# A musubi-tuner user's training config as they write it: flat keys, lists for the nargs options.
MUSUBI_CONFIG = """\
dit = "ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt"
dataset_config = "dataset.toml"
sdpa = true
mixed_precision = "bf16"
fp8_base = true
optimizer_type = "adamw8bit"
learning_rate = 2e-4
gradient_checkpointing = true
max_data_loader_n_workers = 2
persistent_data_loader_workers = true
network_module = "networks.lora"
network_dim = 32
network_args = ["loraplus_lr_ratio=4", "exclude_patterns=[r'.*single_blocks.*']"]
timestep_sampling = "shift"
discrete_flow_shift = 7.0
max_train_epochs = 16
save_every_n_epochs = 1
seed = 42
output_dir = "output"
output_name = "name-of-lora"
"""


def write(tmp_path: Path, text: str, name: str = "train.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def from_file(tmp_path: Path, text: str, *argv: str) -> TrainConfig:
    return parse_args(["--config_file", str(write(tmp_path, text)), *argv])


def file_error(tmp_path: Path, text: str, *argv: str) -> str:
    with pytest.raises(UserError) as error:
        from_file(tmp_path, text, *argv)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "train.toml") in message
    return message


def test_the_file_supplies_options(tmp_path):
    args = from_file(
        tmp_path,
        'dit = "w.safetensors"\nnetwork_dim = 8\nlearning_rate = 1e-4\ngradient_checkpointing = true\n'
        'mixed_precision = "bf16"\noptimizer_args = ["weight_decay=0.01"]\nlr_warmup_steps = 0.1\n',
    )
    assert (args.model.dit, args.network.network_dim, args.optimizer.learning_rate) == (
        "w.safetensors",
        8,
        1e-4,
    )
    assert (args.memory.gradient_checkpointing, args.training.mixed_precision) == (True, "bf16")
    assert (args.optimizer.optimizer_args, args.optimizer.lr_warmup_steps) == (("weight_decay=0.01",), 0.1)
    assert args.modes.config_file == str(tmp_path / "train.toml")


def test_a_musubi_config_parses_unchanged(tmp_path):
    args = from_file(tmp_path, MUSUBI_CONFIG)
    assert args == TrainConfig.of(
        dit="ckpts/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt",
        dataset_config="dataset.toml",
        sdpa=True,
        mixed_precision="bf16",
        fp8_base=True,
        optimizer_type="adamw8bit",
        learning_rate=2e-4,
        gradient_checkpointing=True,
        max_data_loader_n_workers=2,
        persistent_data_loader_workers=True,
        network_module="networks.lora",
        network_dim=32,
        network_args=("loraplus_lr_ratio=4", "exclude_patterns=[r'.*single_blocks.*']"),
        timestep_sampling="shift",
        discrete_flow_shift=7.0,
        max_train_epochs=16,
        save_every_n_epochs=1,
        seed=42,
        output_dir="output",
        output_name="name-of-lora",
        config_file=str(tmp_path / "train.toml"),
    )


def test_the_command_line_wins(tmp_path):
    text = (
        'learning_rate = 1e-4\nnetwork_args = ["loraplus_lr_ratio=4"]\nmixed_precision = "bf16"\nseed = 1\n'
    )
    args = from_file(
        tmp_path, text, "--learning_rate", "3e-4", "--network_args", "verbose=True", "--seed", "7"
    )
    assert (args.optimizer.learning_rate, args.network.network_args, args.training.seed) == (
        3e-4,
        ("verbose=True",),
        7,
    )
    assert args.training.mixed_precision == "bf16"  # not on the command line: the file's


def test_network_args_given_twice_add_up_over_the_files(tmp_path):
    text = 'network_args = ["loraplus_lr_ratio=4"]\noptimizer_args = ["weight_decay=0.1"]\n'
    args = from_file(
        tmp_path, text, "--network_args", "loraplus_lr_ratio=8", "--network_args", "verbose=True"
    )
    assert args.network.network_args == ("loraplus_lr_ratio=8", "verbose=True")  # both flags, not the file's
    assert args.optimizer.optimizer_args == ("weight_decay=0.1",)


def test_a_flag_false_in_the_file_is_turned_on_by_the_command_line(tmp_path):
    assert from_file(tmp_path, "save_state = false\n").saving.save_state is False
    assert from_file(tmp_path, "save_state = false\n", "--save_state").saving.save_state is True
    assert from_file(tmp_path, "save_state = true\n").saving.save_state is True


def test_the_command_line_order_does_not_matter(tmp_path):
    path = str(write(tmp_path, "network_dim = 8\n"))
    before = parse_args(["--network_dim", "16", "--config_file", path])
    after = parse_args(["--config_file", path, "--network_dim", "16"])
    assert before.network.network_dim == after.network.network_dim == 16


def test_sections_flatten(tmp_path):
    flat = from_file(tmp_path, "learning_rate = 1e-4\nnetwork_dim = 16\nsave_every_n_steps = 50\n")
    sectioned = from_file(
        tmp_path,
        "[optimizer]\nlearning_rate = 1e-4\n\n[network]\nnetwork_dim = 16\n\n[saving]\nsave_every_n_steps = 50\n",
    )
    assert flat == sectioned
    assert (
        sectioned.optimizer.learning_rate,
        sectioned.network.network_dim,
        sectioned.saving.save_every_n_steps,
    ) == (1e-4, 16, 50)


def test_top_level_keys_and_sections_mix(tmp_path):
    args = from_file(tmp_path, 'dit = "w.pt"\n[optimizer]\nlearning_rate = 5e-5\n')
    assert (args.model.dit, args.optimizer.learning_rate) == ("w.pt", 5e-5)


def test_the_file_name_may_omit_toml(tmp_path):
    """musubi-tuner appends .toml to a --config_file without it; its users' scripts rely on that."""
    write(tmp_path, "network_dim = 4\n")
    assert parse_args(["--config_file", str(tmp_path / "train")]).network.network_dim == 4


def test_list_lora_targets_can_come_from_the_file(tmp_path):
    assert from_file(tmp_path, 'list_lora_targets = "json"\n').modes.list_lora_targets == "json"
    assert from_file(tmp_path, "list_lora_targets = true\n").modes.list_lora_targets == "table"


# --- mistakes: one line naming the file and the key ---------------------------------------------------------


def test_an_unknown_key_suggests_the_option(tmp_path):
    message = file_error(tmp_path, "[optimizer]\nlearnig_rate = 1e-4\n")
    assert "'learnig_rate'" in message and "[optimizer]" in message
    assert message.endswith("did you mean learning_rate?")


def test_an_unknown_key_with_no_near_option_points_to_the_docs(tmp_path):
    message = file_error(tmp_path, "zzz = 1\n")
    assert (
        "unknown option 'zzz'" in message and "docs/options.md" in message and "did you mean" not in message
    )


def test_hyphens_are_not_option_names(tmp_path):
    assert "did you mean network_dim?" in file_error(tmp_path, "network-dim = 8\n")


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('network_dim = "x"', ["network_dim", "an integer > 0", "'x'"]),
        ("network_dim = 0", ["network_dim", "an integer > 0"]),
        ("network_dim = 8.5", ["network_dim", "an integer > 0"]),
        ("network_dim = true", ["network_dim", "an integer > 0"]),
        ("learning_rate = true", ["learning_rate", "a number > 0"]),
        ("learning_rate = -1e-4", ["learning_rate", "a number > 0"]),
        ("learning_rate = inf", ["learning_rate", "a number > 0"]),
        ('gradient_checkpointing = "yes"', ["gradient_checkpointing", 'expected true or false, got "yes"']),
        ("gradient_checkpointing = 1", ["gradient_checkpointing", "expected true or false"]),
        (
            'network_args = "loraplus_lr_ratio=4"',
            ["network_args", "expected a list", 'network_args = ["..."]'],
        ),
        ("network_args = [4]", ["network_args", "expected a string, got 4"]),
        ("dit = 3", ["dit", "expected a string, got 3"]),
        ('dit = ["a.pt", "b.pt"]', ["dit", "expected a single value"]),
        ('mixed_precision = "fp8"', ["mixed_precision", "invalid choice", "no, fp16, bf16"]),
        ('timestep_sampling = "sigmoidd"', ["timestep_sampling", "did you mean sigmoid?"]),
        ("lr_warmup_steps = 1.5", ["lr_warmup_steps", "a ratio in [0, 1)"]),
        ('dit_dtype = "fp8"', ["dit_dtype", "bfloat16"]),
        ('resume = "no/such/state"', ["resume", "'auto'"]),
        ('list_lora_targets = "yaml"', ["list_lora_targets", "invalid choice"]),
        ("[optimizer.adam]\nbeta1 = 0.9", ["[optimizer.adam]", "nest one level only"]),
        ("[network_args]\nverbose = true", ["network_args", "not a table"]),
        ('config_file = "other.toml"', ["config_file", "command line"]),
    ],
)
def test_a_wrong_value_is_one_line(tmp_path, line, fragments):
    message = file_error(tmp_path, line + "\n")
    for fragment in fragments:
        assert fragment in message


def test_a_wrong_value_is_refused_even_when_the_command_line_sets_that_option(tmp_path):
    """The file must be right on its own: the next run may not pass the option."""
    file_error(tmp_path, "network_dim = 0\n", "--network_dim", "8")


@pytest.mark.parametrize(
    "text",
    [
        "learning_rate = 1e-4\n[optimizer]\nlearning_rate = 2e-4\n",
        "[a]\nnetwork_dim = 8\n[b]\nnetwork_dim = 8\n",
    ],
)
def test_a_key_set_twice_across_sections_is_an_error(tmp_path, text):
    message = file_error(tmp_path, text)
    assert "is set twice" in message
    assert ("learning_rate" in message) != ("network_dim" in message)


def test_a_key_set_twice_in_one_table_is_a_syntax_error(tmp_path):
    assert "line" in file_error(tmp_path, "seed = 1\nseed = 2\n")


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path):
    message = file_error(tmp_path, 'dit = "w.pt"\nnetwork_dim = 8\nlearning_rate = = 1e-4\n')
    assert "line 3" in message and "TOML syntax error" in message


def test_a_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--config_file .*nope.toml: no such file"):
        parse_args(["--config_file", str(tmp_path / "nope.toml")])


# --- the file is checked exactly like the command line ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-10, max_value=10**6))
def test_integers_from_the_file_are_read_as_the_command_line_reads_them(tmp_path_factory, value):
    tmp_path = tmp_path_factory.mktemp("cfg")
    try:
        cli = parse_args(["--network_dim", str(value)]).network.network_dim
    except SystemExit:
        cli = None
    try:
        from_toml = from_file(tmp_path, f"network_dim = {value}\n").network.network_dim
    except UserError:
        from_toml = None
    assert cli == from_toml and (cli is None) == (value <= 0)


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_floats_survive_the_file_exactly(tmp_path_factory, value):
    tmp_path = tmp_path_factory.mktemp("cfg")
    assert from_file(tmp_path, f"learning_rate = {value!r}\n").optimizer.learning_rate == value


# --- through hv_train_network.py: exit 2 and one line --------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_the_script_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "[optimizer]\nlearnig_rate = 1e-4\n")
    code = hv_train_network.main(["--list_lora_targets", "json", "--config_file", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "Traceback" not in captured.err
    assert captured.err.strip().splitlines() == [
        f"error: {path}: unknown option 'learnig_rate' in [optimizer]; did you mean learning_rate?"
    ]


@pytest.mark.usefixtures("restore_logging")
def test_network_args_from_the_file_reach_the_listing(tmp_path, capsys):
    path = write(
        tmp_path,
        "[network]\nnetwork_dim = 8\nnetwork_args = [\"exclude_patterns=[r'.*single_blocks.*']\"]\n"
        'list_lora_targets = "json"\n',
    )
    code = hv_train_network.main(["--config_file", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert len(report["modules"]) == 160 and {m["dim"] for m in report["modules"]} == {8}
