"""The run report (<output_name>_report.html): what it shows, that the page is updated at each save, escaped,
self-contained, that a real browser renders its plot and previews, and that a report bug never stops a run (the
plot itself: test_loss_plot.py)."""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


class _Page(HTMLParser):
    """The elements a check needs: every tag with its attributes, in order, and the text of the page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def _report(run) -> str:
    return (run["out"] / f"{run['name']}_report.html").read_text(encoding="utf-8")


def test_report_shows_the_run(reported_run):
    page = _Page(_report(reported_run))
    text = " ".join(page.text)
    images = page.all("img")
    plot = [i for i in images if i.get("id") == "plot"]
    assert len(plot) == 1 and plot[0]["src"].startswith("data:image/png;base64,")
    # previews: 2 saves (steps 4 and 8) x 2 prompts, each a frame strip linked to its file
    previews = [i for i in images if i.get("id") != "plot"]
    assert len(previews) == 4 and all(i["src"].startswith("data:image/jpeg;base64,") for i in previews)
    links = {a["href"] for a in page.all("a")}
    for step in (4, 8):
        assert f"sample/tiny_lora_step{step:08d}_00_1.mp4" in links
        assert f"sample/tiny_lora_step{step:08d}_01_2.png" in links
    assert {"tiny_lora.safetensors", "tiny_lora-step00000004.safetensors", "tiny_lora_loss.png"} <= links
    html = _report(reported_run)
    assert "<th>step 4</th>" in html and "<th>step 8</th>" in html  # the rows: one per preview round
    assert "finished: step 8 of 8" in text
    for fragment in (
        "lora_plus",
        "networks.lora",
        "loraplus_lr_ratio=4",
        "demo/cache/videos",
        "time per step",
        "process RSS (peak)",
        "last validation loss",
        "double_blocks.0.img_attn_qkv",
    ):
        assert fragment in text, fragment
    # the video dataset's buckets: red_square (160x96) gives windows of 1, 9 and 17 frames (target_frames)
    for frames in (1, 9, 17):
        assert re.search(rf"160x96 {frames} 1 1 red_square frames 0-{frames - 1} ", text), frames
    # nothing comes from elsewhere: no external script, style or image
    assert not [
        a
        for t, a in page.tags
        if t in ("script", "link", "img", "iframe")
        and re.match(r"(https?:)?//", a.get("src", "") + a.get("href", ""))
    ]


def test_user_strings_are_escaped(reported_run):
    html = _report(reported_run)
    page = _Page(html)
    assert len(page.all("script")) == 1  # ours; the prompt's <script> is text
    assert (
        "&lt;script&gt;document.title=&#x27;injected&#x27;&lt;/script&gt; a red &amp; &quot;square&quot;"
        in html
    )
    assert "<script>document.title" not in html


def test_report_is_rewritten_at_each_save_and_preview(reported_run):
    """A run killed after its step-4 save has the page written then: complete, with that save's previews."""
    snapshots = reported_run["snapshots"]
    assert [(step, status) for step, status, _ in snapshots] == [
        (4, "running"),
        (8, "running"),
        (8, "finished"),
    ]
    first = _Page(snapshots[0][2])
    assert "running: step 4 of 8" in " ".join(first.text)
    assert len(first.all("img")) == 1 + 2 and snapshots[0][2].rstrip().endswith("</html>")


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path: Path, *args: str) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
def test_chromium_renders_plot_and_previews(reported_run, tmp_path):
    report = reported_run["out"] / "tiny_lora_report.html"
    raw = _chromium(tmp_path, "--dump-dom", report.as_uri())
    dom = _Page(raw)
    body = dom.all("body")[0]
    images = dom.all("img")
    assert body["data-images-total"] == str(len(images)) == "5"
    assert body["data-images-loaded"] == "5", [
        i.get("alt") for i in images if i.get("data-natural-width") == "0"
    ]
    assert all(int(i["data-natural-width"]) > 0 for i in images)
    assert "<title>tiny_lora: training report</title>" in raw  # the prompt's script never ran
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,1400", report.as_uri())
    with Image.open(shot) as image:
        colors = image.convert("RGB").getcolors(1 << 20) or []
        assert image.size == (1000, 1400) and len(colors) > 100, "the screenshot is blank"


def test_a_report_bug_is_a_warning_but_a_full_disk_stops_the_run(tmp_path, monkeypatch, caplog):
    import errno
    from types import SimpleNamespace

    from run_report.page import RunReport

    run = SimpleNamespace(
        losses=[],
        dataset_summary=[],
        output_dir=tmp_path,
        config=SimpleNamespace(saving=SimpleNamespace(output_name="x")),
    )
    report = RunReport(run)
    monkeypatch.setattr(RunReport, "_write", lambda self, step, status: {}["a bug"])
    assert report.write(1, "running") == tmp_path / "x_report.html"
    assert any("run report was not updated" in r.getMessage() for r in caplog.records)

    def full(self, step, status):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunReport, "_write", full)
    with pytest.raises(OSError):
        report.write(2, "running")
