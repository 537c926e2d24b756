"""`--log_with tensorboard`: the event file the run writes, read back with tensorboard's own reader."""

import io

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
    runs = sorted(p for p in reported_run["logs"].iterdir() if p.is_dir())
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
