"""The documentation cannot drift: links resolve, the diagram is its committed source, and the
concepts page covers every Dockerfile instruction the images use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stack import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text()
    broken = []
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(target)
    assert not broken, f"broken links in {doc.name}: {broken}"


def test_readme_diagram_is_the_committed_source() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", readme, re.S)
    assert block, "README.md has no mermaid diagram"
    assert block.group(1) == (ROOT / "docs" / "architecture.mmd").read_text()


def test_concepts_explain_every_dockerfile_instruction_used() -> None:
    used = set()
    for dockerfile in (ROOT / "images").glob("*/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            match = re.match(r"([A-Z]+)\s", line)
            if match:
                used.add(match.group(1))
    for page in ("concepts.md", "concepts.fr.md"):
        text = (ROOT / "docs" / page).read_text()
        missing = sorted(i for i in used if f"| `{i}` |" not in text)
        assert not missing, f"docs/{page} does not explain: {missing}"
