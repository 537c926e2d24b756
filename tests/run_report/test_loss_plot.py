"""run_report/loss_plot.py: the plot (<output_name>_loss.png) of a run, its figure's curves and axes, and
matplotlib as an optional package (skipped with one line when absent, never imported at start-up)."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from run_report import loss_plot
from run_report.loss_plot import Curves

ROOT = Path(__file__).resolve().parents[2]


def test_plot_png(reported_run):
    with Image.open(reported_run["out"] / "tiny_lora_loss.png") as image:
        assert image.format == "PNG" and image.size == (800, 640)
        assert (
            len(image.convert("RGB").getcolors(1 << 16) or []) > 20
        )  # curves, text, axes: not a blank canvas


def test_figure_has_both_losses_and_each_lr_group():
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plot is then skipped)")
    curves = Curves(
        loss=[(s, 1.0 / s) for s in range(1, 101)],
        validation=[(50, 0.3), (100, 0.2)],
        learning_rates={
            "lora": [(s, 1e-4) for s in range(1, 101)],
            "lora_plus": [(s, 4e-4) for s in range(1, 101)],
        },
        title="t",
    )
    loss_ax, lr_ax = loss_plot.build_figure(curves).axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"training loss", "EMA (10 steps)", "validation loss"}
    assert list(lines["validation loss"].get_xdata()) == [50, 100]
    assert lines["EMA (10 steps)"].get_ydata()[0] == pytest.approx(1.0)  # bias-corrected: starts at the data
    assert {line.get_label() for line in lr_ax.get_lines()} == {"lr/lora", "lr/lora_plus"}
    assert lr_ax.get_xlabel() == "optimizer step" and "loss" in loss_ax.get_ylabel()
    assert lr_ax.get_ylabel() == "learning rate"


def test_without_matplotlib_the_plot_is_skipped_with_one_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what find_spec and import see when it is absent
    monkeypatch.setattr(loss_plot, "_warned_missing", False)
    curves = Curves(loss=[(1, 1.0), (2, 0.5)])
    assert loss_plot.write_loss_plot(tmp_path / "x_loss.png", curves) is None
    assert loss_plot.write_loss_plot(tmp_path / "x_loss.png", curves) is None
    assert not (tmp_path / "x_loss.png").exists()
    assert [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()] == [
        "matplotlib is not installed: the loss plot is skipped (pip install matplotlib)"
    ]


def test_start_up_does_not_import_matplotlib():
    code = (
        "import sys, hv_train_network, training.trainer, run_report.page, run_report.loss_plot;"
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
