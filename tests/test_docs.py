"""The README and docs/ are a house a newcomer can walk: every link lands, and nothing cites a file outside the
repository (a user's clone has only what is in it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "recipes").glob("*.md"),
                *(ROOT / "benchmarks").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#") and not line.startswith("#!"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_lands(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_page_with_the_two_commands_first() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.index("make demo") < 200 and text.index("make test") < 300


def test_nothing_cites_a_file_outside_the_repository() -> None:
    outside = re.compile(r"CONTRACTS\.md|FINDINGS\.md|ARCHITECTURE\.md|\.\./shared|shared/(?:FINDINGS|CONTRACTS)")
    found = []
    for path in sorted(ROOT.rglob("*")):
        if (not path.is_file() or any(p in {".git", ".venv", "runs", "__pycache__", ".pytest_cache"} for p in
                                      path.relative_to(ROOT).parts) or path.suffix in {".png", ".pyc"}
                or path == Path(__file__).resolve()):
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        lines = enumerate(text.splitlines(), 1)
        found += [f"{path.relative_to(ROOT)}:{i}" for i, line in lines if outside.search(line)]
    assert not found, f"files cite what a user's clone does not have: {found}"


#: A path into the repository as prose writes it (`posttrain/core/tiny.py`, `recipes/tiny-r1.yaml`).
REPO_PATH = re.compile(r"(?<![\w./-])((?:posttrain|rewards|data_pipelines|benchmarks|recipes|docs|scripts|tests)"
                       r"/[\w./-]*\w\.(?:py|yaml|md|txt|json|sh))\b")


#: Paths named on purpose that are not in a checkout: what a command writes, and a recipe the prose makes up.
NOT_IN_A_CHECKOUT = ("benchmarks/results/", "recipes/x.yaml")


def test_every_repository_path_the_docs_and_code_name_exists() -> None:
    """A module moved or renamed leaves no reader at a dead end: the paths docs, docstrings and comments name exist."""
    missing = []
    for rel in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split():
        path = ROOT / rel
        if path.suffix not in {".py", ".md", ".yaml", ".toml"} or not path.exists() or "conformance" in rel:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            for name in REPO_PATH.findall(line):
                if not (ROOT / name).exists() and not name.startswith(NOT_IN_A_CHECKOUT):
                    missing.append(f"{rel}:{i}: {name}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)
