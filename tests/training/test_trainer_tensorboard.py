"""`--log_with tensorboard`: the event file the run writes, read back with tensorboard's own reader."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from run_report.preview_media import frame_strip

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install -e '.[test]' or '.[logging]')",
)


@pytest.fixture(scope="module")
def events(reported_run):
    # musubi-tuner's layout: <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/<tracker name>
    (run_dir,) = (p for p in reported_run["logs"].iterdir() if p.is_dir())
    assert re.fullmatch(r"\d{14}", run_dir.name), run_dir.name  # no --log_prefix
    runs = sorted(p for p in run_dir.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["hv_lora"]  # --log_tracker_name's default
    acc = event_accumulator.EventAccumulator(
        str(runs[0]), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def _scalars(events, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_scalars_are_the_runs_losses_and_learning_rates(events, reported_run):
    state = torch.load(
        reported_run["out"] / "tiny_lora-step00000008-state" / "train_state.pt", weights_only=True
    )["extra"]
    loss = _scalars(events, "loss/current")
    assert [s for s, _ in loss] == list(range(1, 9))
    assert [v for _, v in loss] == pytest.approx(state["losses"], rel=1e-6)
    validation = _scalars(events, "loss/validation")
    assert validation == [
        (v["step"], pytest.approx(v["loss/validation"], rel=1e-6)) for v in state["validations"]
    ]
    assert [s for s, _ in validation] == [4, 8]
    lora, plus = _scalars(events, "lr/lora"), _scalars(events, "lr/lora_plus")
    assert [s for s, _ in lora] == [s for s, _ in plus] == list(range(1, 9))
    assert lora[-1][1] == pytest.approx(1e-3)  # --learning_rate after the 5 warm-up steps
    assert lora[0][1] < lora[-1][1]  # warming up
    assert all(
        p == pytest.approx(4 * v) for (_, v), (_, p) in zip(lora, plus, strict=True)
    )  # loraplus_lr_ratio=4


def test_previews_are_logged_as_images(events, reported_run):
    sample = reported_run["out"] / "sample"
    for tag, name, size in (
        ("preview/00", "tiny_lora_step{:08d}_00_1.mp4", (262, 64)),
        ("preview/01", "tiny_lora_step{:08d}_01_2.png", (64, 64)),
    ):
        images = events.Images(tag)
        assert [e.step for e in images] == [4, 8]
        for event in images:
            assert (event.width, event.height) == size  # a video: 4 frames of 64 side by side, 2-pixel gaps
            logged = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            assert np.array_equal(logged, frame_strip(sample / name.format(event.step)))


def test_logging_dir_alone_logs_to_tensorboard_in_a_folder_per_run(cached_demo, tmp_path, monkeypatch):
    # musubi-tuner's meaning: --logging_dir without --log_with is TensorBoard, each run in
    # <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/<tracker name>.
    import hv_train_network

    monkeypatch.chdir(cached_demo)
    argv = [
        "--config_file",
        str(Path(__file__).resolve().parents[2] / "configs" / "tiny_demo.toml"),
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--output_dir",
        str(tmp_path / "out"),
        "--sample_prompts",
        "",
        "--max_train_steps",
        "2",
        "--logging_dir",
        str(tmp_path / "logs"),
        "--log_prefix",
        "mine-",
    ]
    assert hv_train_network.main(argv) == 0
    (run_dir,) = (tmp_path / "logs").iterdir()
    assert re.fullmatch(r"mine-\d{14}", run_dir.name), run_dir.name
    acc = event_accumulator.EventAccumulator(str(run_dir / "hv_lora"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/current")] == [1, 2]


def test_trackers_follow_musubi_tuners_rule():
    from training.options.outputs import LoggingOptions

    assert LoggingOptions().trackers is None and LoggingOptions().run_log_dir(0.0) is None
    assert LoggingOptions(logging_dir="logs").trackers == "tensorboard"
    assert LoggingOptions(logging_dir="logs", log_with="wandb").trackers == "wandb"
    folder = LoggingOptions(logging_dir="logs", log_prefix="a-").run_log_dir(0.0)
    assert folder is not None and folder.parent.name == "logs" and re.fullmatch(r"a-\d{14}", folder.name)
