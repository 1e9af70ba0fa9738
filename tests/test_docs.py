"""The documentation holds together: every relative link in README.md and docs/ (markdown links, image
links, reference definitions, HTML href/src) names a file or folder of the repository, every `#anchor`
names a heading of the file it points into (GitHub's rule), and README.md stays a short front page
with the reference in docs/. Pure text: no network, no imports of the package."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)   # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    in_fence = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            if in_fence is None:
                in_fence = fence.group(1)
            elif fence.group(1) == in_fence:
                in_fence = None
            continue
        if in_fence is None:
            yield number, line


def github_anchor(heading: str) -> str:
    """GitHub's heading id: the rendered text, lower-cased, punctuation other than - and _ dropped,
    each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)                          # HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of a markdown file; a repeated heading gets -1, -2, ..."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in prose_lines(path.read_text()):
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = github_anchor(heading.group(2))
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def links(path: Path):
    """(line number, target) of every link in the file's prose."""
    for number, line in prose_lines(path.read_text()):
        targets = INLINE_LINK.findall(line) + HTML_LINK.findall(line)
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        for target in targets:
            yield number, target


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    cache: dict[Path, set[str]] = {}
    for number, target in links(path):
        where = f"{path.relative_to(root)}:{number}: {target!r}"
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if root not in resolved.parents and resolved != root:
            problems.append(f"{where} points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file or folder ({resolved.relative_to(root)})")
            continue
        if anchor and resolved.suffix == ".md":
            if resolved not in cache:
                cache[resolved] = anchors(resolved)
            if unquote(anchor) not in cache[resolved]:
                problems.append(f"{where}: no heading with id #{anchor} in {resolved.relative_to(root)}")
    return problems


def test_anchor_rule_matches_github():
    assert github_anchor("Serve it with Triton") == "serve-it-with-triton"
    assert github_anchor("What `-o engine.plan` writes") == "what--o-engineplan-writes"
    assert github_anchor("The C++ library against Python (`bench/cpp_vs_python.py`)") == \
        "the-c-library-against-python-benchcpp_vs_pythonpy"
    assert github_anchor("Graphs over 2 GiB") == "graphs-over-2-gib"
    assert github_anchor("See [the docs](docs/README.md)") == "see-the-docs"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Measured\n\n```bash\n# not a heading\n```\n\n## Measured\n### Measured\n")
    assert anchors(page) == {"measured", "measured-1", "measured-2"}


def test_broken_paths_and_anchors_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "img.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Serve it\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Page\n\n"
                    "[ok](other.md#serve-it) [ok](#page) ![ok](../img.png) [ok](https://example.com/x#y)\n"
                    "[gone](missing.md) [bad anchor](other.md#serve) [bad here](#nowhere) ![gone](img.png)\n"
                    "[out](../../elsewhere.md)\n\n[ref]: other.md#other-page\n[badref]: other.md#nope\n"
                    "```\n[in code](not-checked.md)\n```\n")
    problems = broken_links(page, root=tmp_path)
    assert [p.split(": ", 1)[1].split(":")[0] for p in problems] == [
        "'missing.md'", "'other.md#serve'", "'#nowhere'", "'img.png'", "'../../elsewhere.md' points outside the "
        "repository", "'other.md#nope'"], problems


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, "broken links (fix the path or the #anchor):\n" + "\n".join(problems)


def test_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines, expected at most {README_MAX_LINES}: "
                                       "move reference material into docs/ and link it from docs/README.md")


def test_every_doc_is_in_the_index():
    index = ROOT / "docs" / "README.md"
    assert index.is_file(), "docs/README.md (the index of docs/) is missing"
    listed = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(index)
              if target and not EXTERNAL.match(target)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p != index and p.resolve() not in listed]
    assert not missing, f"docs/README.md does not link {missing}: add one line for each"
