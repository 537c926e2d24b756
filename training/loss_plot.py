"""A loss curve as a PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hv_common.atomic import atomic_write


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_loss_plot(path: Path, losses: Sequence[float], title: str = "training loss") -> None:
    from PIL import Image, ImageDraw

    width, height, margin = 640, 360, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([margin, margin // 2, width - margin // 2, height - margin], outline="black")
    if losses:
        lo, hi = min(losses), max(losses)
        span = (hi - lo) or 1.0

        def point(i: int, v: float) -> tuple[float, float]:
            x = margin + (width - 1.5 * margin) * (i / max(1, len(losses) - 1))
            y = height - margin - (height - 1.5 * margin) * ((v - lo) / span)
            return x, y

        raw = [point(i, v) for i, v in enumerate(losses)]
        draw.line(raw, fill=(170, 190, 230), width=1)
        draw.line(
            [point(i, v) for i, v in enumerate(_smooth(losses, max(1, len(losses) // 20)))],
            fill="navy",
            width=2,
        )
        draw.text(
            (margin, height - margin + 6),
            f"step 1 .. {len(losses)}   loss {lo:.4g} .. {hi:.4g}",
            fill="black",
        )
    draw.text((margin, 4), title, fill="black")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
