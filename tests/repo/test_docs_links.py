"""The documentation stays true to the repository: README.md, DEVELOPERS.md and docs/*.md.

Every link is relative and reaches a file that exists (and a heading, when it names one); every path a page
names inside the repository's own folders exists, so a moved module shows here rather than in a reader's
confusion; no page speaks of issue numbers (ours or another project's tracker), which mean nothing to a reader
of the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "DEVELOPERS.md", *(ROOT / "docs").glob("*.md")])
# The repository's own top-level folders (not demo/ or a venv a run leaves in the checkout): a path starting
# with one of them is a claim about this tree.
OWN_FOLDERS = sorted(
    {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"bench", "configs", "docs", "tests"}
)

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# "issue 7", "issues #12", or a bare tracker number "#90" (not an anchor such as "(#6-several-processes)")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+|(?<![\w(])#\d+(?![\w-])", re.IGNORECASE)


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # a '# comment' in a code block is no heading
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(text):
        base = _anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _own_paths(text: str) -> set[str]:
    """Paths like `training/resume/check.py` or bench/gpu_step.py that start with one of our folders."""
    folders = "|".join(re.escape(f) for f in OWN_FOLDERS)
    found = set()
    for match in re.finditer(rf"(?<![\w./-])(?:{folders})/[\w./-]*", text):
        path = match.group(0).rstrip(".-")
        if any(ch in path for ch in "*?{"):  # a glob or a pattern, not one file
            continue
        found.add(path)
    return found


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_link_is_relative_and_resolves(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            broken.append(f"{target} (links stay inside the repository)")
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading in {linked.name})")
    assert broken == [], f"{_page_id(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_path_the_page_names_exists(page):
    missing = sorted(p for p in _own_paths(page.read_text(encoding="utf-8")) if not (ROOT / p).exists())
    assert missing == [], f"{_page_id(page)} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_page_speaks_of_issue_numbers(page):
    assert ISSUE_NUMBER.findall(page.read_text(encoding="utf-8")) == []


def test_the_checks_see_what_they_check():
    assert len(PAGES) >= 4 and {"hv_common", "training", "bench", "docs"} <= set(OWN_FOLDERS)
    assert _anchor("`hv_generate_video.py`: a video with LoRAs") == "hv_generate_videopy-a-video-with-loras"
    assert _own_paths("see `training/lora_layouts.py`, and demo/x.toml") == {"training/lora_layouts.py"}
    text = "the GPU check (issue 7); issues #12; musubi-tuner #90; [a](x.md#6-several) [b](#2-crash)"
    assert ISSUE_NUMBER.findall(text) == ["issue 7", "issues #12", "#90"]
