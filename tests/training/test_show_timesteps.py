"""--show_timesteps console|image: the distribution training would draw, shown, then a stop before anything
loads (no --dit, no dataset needed)."""

from __future__ import annotations

import pytest

import hv_train_network
from training.flow import FlowSettings
from training.show_timesteps import timestep_counts


def test_console_prints_the_histogram_and_the_weighting_then_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--show_timesteps", "console", "--timestep_sampling", "uniform", "--min_timestep", "500"]
    assert hv_train_network.main([*argv, "--weighting_scheme", "cosmap"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Sampled timesteps: max count=")
    bars = {line.split(":")[0].strip(): line.split(": ", 1)[1] for line in out[1:41]}
    assert len(bars) == 40 and bars["0-  24"] == "" and bars["475- 499"] == ""  # below --min_timestep
    assert all(len(bars[k]) > 50 for k in list(bars)[20:])  # uniform above it: full bars
    assert out[41].startswith("Sampled loss weighting: max weighting=")
    assert len(out) == 82 and list(tmp_path.iterdir()) == []  # nothing written


def test_image_writes_a_png_and_says_where(tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert hv_train_network.main(["--show_timesteps", "image", "--output_dir", str(out_dir)]) == 0
    png = out_dir / "timesteps.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"timestep distribution written to {png}" in capsys.readouterr().out


def test_the_counts_follow_the_options():
    def mean(settings: FlowSettings) -> float:
        counts = timestep_counts(settings, draws=20_000)
        assert sum(counts) == 20_000
        return sum(i * c for i, c in enumerate(counts)) / 20_000

    assert mean(FlowSettings(timestep_sampling="uniform")) == pytest.approx(500, abs=10)
    assert mean(FlowSettings(timestep_sampling="shift", discrete_flow_shift=7.0)) > 750
