"""Every pointer into the docs resolves: links between pages, their anchors, and the
`docs/<page>.md, "<section>"` references that code comments and migrations give as their why."""

import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".work", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules", "build",
        "dist", "vendor"}
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# A reference names a page and, optionally, a quoted section or pass: docs/collector.md, "Guarantees"
REFERENCE = re.compile(r'docs/([\w./-]+?\.md)(?:,\s+"([^"\n]+)")?')
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def _sources() -> list[Path]:
    return sorted(p for p in REPO.rglob("*")
                  if p.suffix in {".py", ".md", ".toml", ".sample", ".service", ".timer", ".sh"}
                  and p.is_file() and not SKIP.intersection(p.relative_to(REPO).parts))


@functools.cache
def _text(page: Path) -> str:
    """A page's text, read once however many links and references point into it."""
    return page.read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    # a '#' comment in a code block is no heading
    text = re.sub(r"```.*?```", "", _text(page), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, flags=re.M)}


def test_the_slug_is_githubs() -> None:
    assert _slug("Monitoring (`GET /metrics`)") == "monitoring-get-metrics"
    assert _slug("Replacing a lost or compromised key") == "replacing-a-lost-or-compromised-key"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_between_pages_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


def test_references_name_a_page_and_a_section_that_exist() -> None:
    seen, broken = 0, []
    for source in _sources():
        for m in REFERENCE.finditer(source.read_text(errors="replace")):
            seen += 1
            page, section = REPO / "docs" / m.group(1), m.group(2)
            where = f"{source.relative_to(REPO)}: {m.group(0)}"
            if not page.exists():
                broken.append(f"{where}: no such page")
            elif section and section not in _text(page):
                broken.append(f"{where}: the page has no such section")
    assert seen > 50  # the pattern still finds the references the code is full of
    assert not broken, "\n".join(broken)


# Where the docs name what a run makes (gitignored), not what the repository holds
MADE_BY_A_RUN = {"tests/web/screenshots"}
TOP = "agent|collector|protocol|billing|audit|adapters|bench|tests|scripts|systemd|packaging|docs"
PATH = re.compile(rf"(?<![\w/.-])((?:{TOP})/[\w/.-]*\w)")


def _exists(path: str) -> bool:
    if (REPO / path).exists() or path in MADE_BY_A_RUN:
        return True
    module, _, _ = path.rpartition(".")  # tests/_seed.apply: a module's function
    return bool(module) and (REPO / f"{module}.py").exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_the_docs_name_exist(page: Path) -> None:
    missing = sorted({m.group(1) for m in PATH.finditer(page.read_text()) if not _exists(m.group(1))})
    assert not missing, missing
