"""The README and docs/ keep their promises: every relative link leads somewhere, and the
README still names the test command that CI runs.

A moved or renamed section breaks links silently on GitHub; this check makes it a failing
test. Anchors follow GitHub's slugs: lower case, punctuation dropped, spaces to hyphens, a
repeated heading gets ``-1``, ``-2``...
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
#: [text](target) or ![alt](target), the target up to whitespace or ")"; an optional title.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:...


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a '#' in a TOML comment is no heading)."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page's headings make, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _prose_lines(text):
        m = _HEADING.match(line)
        if m is None:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(text: str) -> list[str]:
    """Every link target in a page's prose (not in code blocks nor code spans)."""
    out: list[str] = []
    for line in _prose_lines(text):
        out += _LINK.findall(_CODE_SPAN.sub("", line))
    return out


def broken_links(page: Path, text: str) -> list[str]:
    """The relative links of ``page`` (with content ``text``) that lead nowhere."""
    problems: list[str] = []
    for target in links(text):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if path_part and not dest.exists():
            problems.append(f"{page.name}: {target}: no such file")
            continue
        if anchor and dest.suffix == ".md":
            dest_text = text if dest == page else dest.read_text(encoding="utf-8")
            if anchor not in anchors(dest_text):
                problems.append(f"{page.name}: {target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    assert broken_links(page, page.read_text(encoding="utf-8")) == []


def test_the_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading: yes\n")
    page = tmp_path / "page.md"
    text = (
        "# Title\n\n## Title\n\n"
        "[ok](other.md) [ok](other.md#a-code-heading-yes) [ok](#title) [ok](#title-1)\n"
        "[ok](https://example.com/x.md#nowhere) `[not a link](missing.md)`\n"
        "```\n# not a heading\n[not a link](missing.md)\n```\n"
        "[bad](missing.md) [bad](other.md#nowhere) [bad](#title-2) [bad](#not-a-heading)\n"
    )
    assert broken_links(page, text) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nowhere: no heading #nowhere in other.md",
        "page.md: #title-2: no heading #title-2 in page.md",
        "page.md: #not-a-heading: no heading #not-a-heading in page.md",
    ]


def test_slugs_follow_github() -> None:
    assert slug("`nat`: L4 DNAT in the kernel") == "nat-l4-dnat-in-the-kernel"
    assert slug("Under attack, under churn, across restarts (issue 10)") == (
        "under-attack-under-churn-across-restarts-issue-10"
    )
    assert slug("`runtime.realtime_priority`") == "runtimerealtime_priority"
    assert slug("Operate it") == "operate-it"


def test_readme_names_the_test_command_ci_runs() -> None:
    """.ci/run runs scripts/test.sh ("the README's test command"): the README must show that
    very command in a shell block, so a newcomer runs what CI runs."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (script,) = re.findall(r"^exec \./(scripts/\S+)", ci, re.M)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", readme, re.M | re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()]
    assert f"sudo ./{script}" in commands
