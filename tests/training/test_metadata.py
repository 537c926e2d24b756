"""The LoRA file's metadata as musubi-tuner writes it: the ss_* keys, and the modelspec keys with
--metadata_title/author/description/license/tags/reso/arch (the saved file's header: tests/e2e/test_musubi_run_options.py)."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest

from training.args import parse_args
from training.metadata import training_metadata
from training.options import TrainConfig

NOW = 1_700_000_000.25
NETWORK = SimpleNamespace(
    network_module="networks.lora",
    spec=SimpleNamespace(dim=8, alpha=4.0, dropout=None, args=SimpleNamespace(loraplus_lr_ratio=None)),
)


def metadata(**options) -> dict[str, str]:
    return training_metadata(TrainConfig.of(**options), NETWORK, [], 10, 1, "hash", now=NOW)  # type: ignore[arg-type]


def test_modelspec_defaults_are_musubi_tuners():
    meta = metadata(output_name="my_lora")
    assert {k: v for k, v in meta.items() if k.startswith("modelspec.")} == {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "hunyuan-video/lora",
        "modelspec.implementation": "https://github.com/Tencent/HunyuanVideo",
        "modelspec.title": "my_lora",  # --metadata_title unset: --output_name
        "modelspec.resolution": "1280x720",  # musubi-tuner's placeholder
        "modelspec.date": datetime.datetime.fromtimestamp(int(NOW)).isoformat(),
    }
    assert metadata()["modelspec.title"] == f"LoRA@{NOW}"  # neither: musubi-tuner's LoRA@<time>


def test_metadata_options_set_their_modelspec_keys():
    meta = metadata(
        output_name="my_lora",
        metadata_title="Title",
        metadata_author="me",
        metadata_description="what it does",
        metadata_license="MIT",
        metadata_tags="style,anime",
        metadata_reso="960,544",
        metadata_arch="hunyuan-video-i2v",
    )
    assert meta["modelspec.title"] == "Title"
    assert meta["modelspec.author"] == "me"
    assert meta["modelspec.description"] == "what it does"
    assert meta["modelspec.license"] == "MIT"
    assert meta["modelspec.tags"] == "style,anime"
    assert meta["modelspec.resolution"] == "960x544"
    assert meta["modelspec.architecture"] == "hunyuan-video-i2v/lora"  # musubi-tuner: the custom arch + /lora
    assert meta["ss_architecture"] == "hunyuan-video"  # what the file holds is unchanged


def test_one_size_is_a_square():
    assert metadata(metadata_reso="512")["modelspec.resolution"] == "512x512"


def test_timestep_range_is_written_when_restricted():
    assert "modelspec.timestep_range" not in metadata()
    assert metadata(min_timestep=100)["modelspec.timestep_range"] == "100,1000"
    assert metadata(max_timestep=900)["modelspec.timestep_range"] == "0,900"


def test_no_metadata_keeps_the_minimum_and_the_modelspec_keys():
    meta = metadata(no_metadata=True, training_comment="secret", metadata_author="me", network_args=("a=1",))
    assert {k for k in meta if k.startswith("ss_")} == {
        "ss_network_module",
        "ss_network_dim",
        "ss_network_alpha",
        "ss_network_args",
        "ss_architecture",
    }
    assert meta["ss_network_args"] == '["a=1"]' and meta["ss_network_dim"] == "8"
    assert meta["modelspec.author"] == "me"  # musubi-tuner writes the modelspec keys with --no_metadata too
    assert "ss_training_comment" in metadata(training_comment="secret")


@pytest.mark.parametrize("text", ["0", "1280,", "a,b", "1,2,3", "-5", "1280x720"])
def test_a_bad_resolution_is_one_line(text, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--metadata_reso", text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metadata_reso" in err and "W,H" in err
