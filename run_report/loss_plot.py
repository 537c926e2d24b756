"""The run's curves as one PNG, drawn with matplotlib: training loss (raw and smoothed), validation loss, and the
learning rate of each parameter group, against the optimizer step.

matplotlib is imported only when the first plot is drawn (start-up time), through its Agg canvas and a bare
Figure (no pyplot: no global state, no GUI backend chosen). Without matplotlib the plot is skipped with one log
line and `render_curves` returns None.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hv_common.atomic import atomic_write

logger = logging.getLogger(__name__)
_warned_missing = False


@dataclass
class Curves:
    """What the plot shows; each series is (step, value) pairs, steps counted from 1."""

    loss: Sequence[tuple[int, float]] = ()
    validation: Sequence[tuple[int, float]] = ()
    learning_rates: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    title: str = "training"


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average over `span` steps, bias-corrected (the first values are not pulled to 0)."""
    beta = 1.0 - 2.0 / (span + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg = beta * avg + (1 - beta) * v
        weight = beta * weight + (1 - beta)
        out.append(avg / weight)
    return out


def smoothing_span(count: int) -> int:
    """About a tenth of the run, 1 to 200 steps: a visible trend without hiding the last stretch."""
    return max(1, min(200, count // 10))


def _matplotlib_available() -> bool:
    global _warned_missing
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return True
    if not _warned_missing:
        logger.warning("matplotlib is not installed: the loss plot is skipped (pip install matplotlib)")
        _warned_missing = True
    return False


def render_curves(curves: Curves) -> bytes | None:
    """The plot as PNG bytes, or None when matplotlib is missing (logged once)."""
    if not _matplotlib_available():
        return None
    buffer = io.BytesIO()
    build_figure(curves).savefig(buffer, format="png")
    return buffer.getvalue()


def build_figure(curves: Curves):
    """A matplotlib Figure on an Agg canvas: the loss above, the learning rates below, one step axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    _draw_loss(loss_ax, curves)
    _draw_learning_rates(lr_ax, curves.learning_rates)
    lr_ax.set_xlabel("optimizer step")
    fig.suptitle(curves.title)
    return fig


def _draw_loss(ax, curves: Curves) -> None:
    finite = [(s, v) for s, v in curves.loss if math.isfinite(v)]  # with the NaN guard off a NaN may be there
    if finite:
        steps, values = zip(*finite, strict=True)
        span = smoothing_span(len(values))
        ax.plot(steps, values, color="#9db4e0", linewidth=0.8, label="training loss")
        if span > 1:
            ax.plot(steps, ema(values, span), color="#1f3c88", linewidth=1.8, label=f"EMA ({span} steps)")
    validation = [(s, v) for s, v in curves.validation if math.isfinite(v)]
    if validation:
        steps, values = zip(*validation, strict=True)
        ax.plot(steps, values, "o-", color="#d95f02", markersize=4, label="validation loss")
    if not finite and not validation:
        ax.text(0.5, 0.5, "no loss recorded yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best")
    ax.set_ylabel("loss (flow-matching MSE)")
    ax.grid(True, alpha=0.3)


def _draw_learning_rates(ax, learning_rates: Mapping[str, Sequence[tuple[int, float]]]) -> None:
    for kind, series in learning_rates.items():
        if series:
            steps, values = zip(*series, strict=True)
            ax.plot(steps, values, linewidth=1.5, label=f"lr/{kind}")
    if any(learning_rates.values()):
        ax.legend(loc="best")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(True, alpha=0.3)


def write_loss_plot(path: Path, curves: Curves) -> bytes | None:
    """Draw straight into the temporary file, then rename it over `path`; returns the PNG's bytes (None, and no
    file, without matplotlib)."""
    if not _matplotlib_available():
        return None
    written: list[bytes] = []

    def save(tmp: Path) -> None:
        build_figure(curves).savefig(tmp, format="png")
        written.append(tmp.read_bytes())

    atomic_write(path, save)
    return written[0]
