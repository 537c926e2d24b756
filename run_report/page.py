"""One page that shows a run: `<output_dir>/<output_name>_report.html`, rewritten (atomically) at every save, every
preview and at the end, so a run that dies still has the report of its last save.

Self-contained: the plot and a few frames of every preview are inlined as data URIs (the page can be mailed or
moved and still shows everything; a thumbnail strip is some KiB, where the preview videos themselves may be many
MiB each), and each preview links to its file by a relative path (it plays where the report sits beside it).
No script or style comes from elsewhere. Every string from the user (prompts, paths, options) is escaped.

The trainer makes one RunReport (main process only), tells it of each step (`step_done`) and asks it to `write`;
everything else is read from the run here.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import string
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from hv_common.atomic import atomic_write
from hv_common.labels import label_text
from run_report import data as data
from run_report.loss_plot import Curves, write_loss_plot
from run_report.preview_media import Preview, find_previews, frame_strip

logger = logging.getLogger(__name__)
TEMPLATE = Path(__file__).with_name("report_template.html")


def e(value: object) -> str:
    """Every user string goes through this: prompts, paths and options may hold <, & and quotes."""
    return html.escape(str(value), quote=True)


def report_path(output_dir: Path, output_name: str) -> Path:
    return output_dir / f"{output_name}_report.html"


def plot_path(output_dir: Path, output_name: str) -> Path:
    return output_dir / f"{output_name}_loss.png"


class RunReport:
    def __init__(self, run) -> None:
        self.run = run
        self.started = time.time()
        self._last_tick = time.perf_counter()
        # A resumed run's loss history has no step numbers: it is numbered 1.. (exact unless steps were skipped).
        self.loss_steps: list[int] = list(range(1, len(run.losses) + 1))
        self.learning_rates: dict[str, list[tuple[int, float]]] = {}
        self.step_seconds: list[float] = []
        self.command = data.command_line()
        self.datasets = data.datasets(run.dataset_summary)
        self._thumbnails: dict[tuple[Path, int, int], str] = {}

    @property
    def path(self) -> Path:
        return report_path(self.run.output_dir, self.run.config.saving.output_name)

    def step_done(self, step: int) -> None:
        """After an optimizer step whose loss was appended to run.losses."""
        now = time.perf_counter()
        self.step_seconds.append(now - self._last_tick)
        self._last_tick = now
        self.loss_steps.append(step)
        for group in self.run.optimizer.param_groups:  # after the scheduler's step, as the trackers log it
            self.learning_rates.setdefault(str(group.get("kind", "lora")), []).append(
                (step, float(group["lr"]))
            )

    def write(self, step: int, status: str) -> Path:
        """The plot, then the page; both replace their old versions atomically. A disk error stops the run as
        any save's does; any other failure is a warning: hours of training never end for a report."""
        try:
            self._write(step, status)
        except OSError:
            raise
        except Exception as exc:
            logger.warning("the run report was not updated (a bug, please report it): %r", exc)
        self._last_tick = time.perf_counter()  # writing is not a step's time
        return self.path

    def _write(self, step: int, status: str) -> None:
        run, name = self.run, self.run.config.saving.output_name
        curves = Curves(
            loss=list(zip(self.loss_steps, run.losses, strict=False)),
            validation=[(v["step"], v["loss/validation"]) for v in run.validations],
            learning_rates=self.learning_rates,
            title=f"{name}: step {step} of {run.max_steps}",
        )
        png = write_loss_plot(plot_path(run.output_dir, name), curves)
        page = string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
            title=e(f"{name}: training report"), body=self._body(step, status, png)
        )
        atomic_write(self.path, lambda tmp: tmp.write_text(page, encoding="utf-8"))

    # ------------------------------------------------------------ sections

    def _body(self, step: int, status: str, png: bytes | None) -> str:
        run = self.run
        updated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        parts = [
            f"<h1>{e(run.config.saving.output_name)}</h1>",
            f'<p class="status" id="status">{e(status)}: step {step} of {run.max_steps}; updated {e(updated)}</p>',
            "<h2>Run</h2>",
            _table(("", ""), self._summary_rows()),
            "<h2>Curves</h2>",
            self._plot(png),
            "<h2>Previews</h2>",
            self._previews(),
            "<h2>Dataset</h2>",
            self._datasets(),
            "<h2>LoRA</h2>",
            self._lora(),
            "<h2>Files</h2>",
            self._files(),
            "<h2>Command line and options</h2>",
            self._options(),
        ]
        return "\n".join(parts)

    def _summary_rows(self) -> list[tuple[str, str]]:
        run = self.run
        finite = [x for x in run.losses if math.isfinite(x)]
        rows = [
            ("device", f"{run.accelerator.device} x {run.accelerator.num_processes} process(es)"),
            ("running for (since this process started training)", f"{time.time() - self.started:.0f} s"),
            ("last loss", f"{finite[-1]:.5f}" if finite else "-"),
        ]
        if run.validations:
            rows.append(("last validation loss", f"{run.validations[-1]['loss/validation']:.5f}"))
        return [
            (k, e(v))
            for k, v in rows + data.step_times(self.step_seconds) + data.peak_memory(run.accelerator.device)
        ]

    def _plot(self, png: bytes | None) -> str:
        if png is None:
            return '<p class="note">Plot skipped: matplotlib is not installed (pip install matplotlib).</p>'
        name = plot_path(self.run.output_dir, self.run.config.saving.output_name).name
        return (
            f'<p><img class="plot" id="plot" alt="loss and learning-rate curves" src="{_data_uri(png, "png")}">'
            f'</p><p class="note">Also written as <a href="{_href(name)}">{e(name)}</a>.</p>'
        )

    def _previews(self) -> str:
        previews = find_previews(self.run.output_dir / "sample", self.run.config.saving.output_name)
        if not previews:
            return '<p class="note">No preview yet (--sample_prompts with --sample_every_n_steps/epochs).</p>'
        labels = list(dict.fromkeys(p.label for p in previews))  # the order they were written
        indices = sorted({p.index for p in previews})
        prompts = _prompt_texts(self.run.sampler)
        head = "".join(f'<th class="prompt">#{i}: {e(prompts.get(i, ""))}</th>' for i in indices)
        cells = {(p.label, p.index): p for p in previews}
        rows = []
        for label in labels:
            row = "".join(f"<td>{self._preview_cell(cells.get((label, i)))}</td>" for i in indices)
            rows.append(f"<tr><th>{e(label_text(label))}</th>{row}</tr>")
        return (
            f'<table class="previews"><tr><th>saved at</th>{head}</tr>{"".join(rows)}</table>'
            '<p class="note">A few frames of each preview; click one to open its file.</p>'
        )

    def _preview_cell(self, preview: Preview | None) -> str:
        if preview is None:
            return ""
        rel = preview.path.relative_to(self.run.output_dir).as_posix()
        try:
            uri = self._thumbnail(preview.path)
        except Exception as exc:  # a torn or unreadable file must not stop the run: say so in its cell
            logger.warning("report: cannot read preview %s: %s", preview.path, exc)
            return f'<a href="{_href(rel)}">{e(preview.path.name)}</a> (unreadable)'
        return (
            f'<a href="{_href(rel)}"><img alt="{e(preview.path.name)}" src="{uri}"></a>'
            f'<span class="note">seed {preview.seed}</span>'
        )

    def _thumbnail(self, path: Path) -> str:
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in self._thumbnails:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(frame_strip(path)).save(buffer, format="JPEG", quality=85)
            self._thumbnails[key] = _data_uri(buffer.getvalue(), "jpeg")
        return self._thumbnails[key]

    def _datasets(self) -> str:
        parts = []
        for d in self.datasets:
            rows = []
            for b in d.buckets:
                shown = ", ".join(b.windows[:8]) + (
                    f", ... ({len(b.windows)} in all)" if len(b.windows) > 8 else ""
                )
                rows.append(
                    (f"{b.width}x{b.height}", str(b.frames), str(len(b.windows)), str(b.media), e(shown))
                )
            parts.append(
                f"<p><code>{e(d.cache_directory)}</code>: {d.latent_files} cached items, batch size "
                f"{d.batch_size}, {d.num_repeats} repeat(s)</p>"
                + _table(("bucket (W x H)", "frames", "items", "media files", "frame windows"), rows)
            )
        validator = self.run.validator
        if validator is not None:
            parts.append(
                f"<p>Validation: {len(validator.batches)} batch(es), timesteps "
                f"{e(', '.join(f'{t * 1000:.0f}' for t in validator.timesteps.tolist()))}</p>"
            )
        return "\n".join(parts) or '<p class="note">No dataset summary.</p>'

    def _lora(self) -> str:
        run, a = self.run, self.run.config.network
        groups = [(e(k), f"{lr:.3g}", str(n), f"{p:,}") for k, lr, n, p in data.param_groups(run.optimizer)]
        targets = data.lora_targets(run.network)
        rows = [(e(name), str(i), str(o), str(r), f"{al:g}") for name, i, o, r, al in targets]
        return (
            f"<p><code>{e(a.network_module)}</code>, dim {e(a.network_dim)}, alpha {e(a.network_alpha)}, "
            f"network_args <code>{e(' '.join(a.network_args) or '-')}</code>; {len(targets)} modules wrapped</p>"
            + _table(("parameter group", "lr now", "tensors", "parameters"), groups)
            + f"<details><summary>The {len(targets)} wrapped modules</summary>"
            + _table(("module", "in", "out", "rank", "alpha"), rows)
            + "</details>"
        )

    def _files(self) -> str:
        run = self.run
        rows = []
        for path, kind, size in data.written_files(
            run.output_dir, run.config.saving.output_name, None if run.log_dir is None else str(run.log_dir)
        ):
            rel = os.path.relpath(path.resolve(), run.output_dir.resolve())
            rows.append(
                (f'<a href="{_href(Path(rel).as_posix())}">{e(rel)}</a>', e(kind), data.size_text(size))
            )
        return f"<p>Output folder: <code>{e(run.output_dir.resolve())}</code></p>" + _table(
            ("file", "what", "size"), rows
        )

    def _options(self) -> str:
        rows = []
        for name, value, changed in data.options(self.run.config):
            rows.append((f"--{e(name)}", e(value), "set" if changed else "default"))
        body = "".join(
            f'<tr class="{"set" if c == "set" else "default"}"><td><code>{n}</code></td><td><code>{v}</code></td></tr>'
            for n, v, c in rows
        )
        return (
            f"<pre>{e(' '.join(self.command))}</pre>"
            "<details open><summary>Resolved options (config file and command line; grey: the default)</summary>"
            f"<table><tr><th>option</th><th>value</th></tr>{body}</table></details>"
        )


def start_report(run) -> RunReport | None:
    """The main process's report; None on the others (only the main process writes)."""
    return RunReport(run) if run.accelerator.is_main_process else None


def _prompt_texts(sampler) -> dict[int, str]:
    prepared = getattr(sampler, "prepared", None) or []
    return {p.prompt.index: p.prompt.text for p in prepared}


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Cells must be escaped already (some hold links)."""
    top = "" if not any(head) else "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{top}{body}</table>"


def _href(relative: str) -> str:
    return e(quote(relative))


def _data_uri(payload: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(payload).decode('ascii')}"
