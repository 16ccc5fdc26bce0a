"""The documentation: a short README with the two commands that must keep working, and links, paths and module
names in README.md and docs/*.md that point at things that exist."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

DEMO_COMMAND = "pip install -e . && quakemon demo"
TEST_COMMAND = 'pip install -e ".[test]" && pytest'

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_REPO_PATH = re.compile(r"^(?:quakemon|benchmarks|tests|config|systemd|docs|\.ci)/[\w./-]*[\w/]$")
_MODULE = re.compile(r"^quakemon(?:\.\w+)+$")


def _page_ids() -> list[str]:
    return [str(p.relative_to(ROOT)) for p in PAGES]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = "".join(c for c in text if c in " -" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def _prose(page: Path) -> str:
    """The page without fenced code blocks (links inside them are not links)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size < 8000, f"README.md is {size} bytes; keep it under 8,000 and move detail into docs/"


def test_readme_shows_the_demo_and_the_test_command() -> None:
    text = README.read_text()
    assert DEMO_COMMAND in text, "README must show the demo command"
    assert TEST_COMMAND in text, "README must show the test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci, "the README's test command must be the one CI runs"


def test_the_docs_pages_exist() -> None:
    names = {p.name for p in DOCS}
    for expected in ("architecture.md", "wire-protocol.md", "operations.md", "model.md", "training.md",
                     "evaluation.md", "performance.md"):
        assert expected in names, f"docs/{expected} is missing"


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_relative_links_point_at_existing_files_and_headings(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_page_ids())
def test_paths_and_modules_named_in_the_docs_exist(page: Path) -> None:
    missing = []
    for span in _CODE_SPAN.findall(page.read_text()):
        token = span.strip()
        if _REPO_PATH.match(token) and not (ROOT / token).exists():
            missing.append(token)
        elif _MODULE.match(token) and not _module_or_name_exists(token):
            missing.append(token)
    assert not missing, f"{page.name} names paths or modules that do not exist: {missing}"


def _module_or_name_exists(dotted: str) -> bool:
    """True for a module or package (quakemon.pipeline.runner), or a name it defines or imports at top level
    (quakemon.pipeline.runner.DetectionRunner, quakemon.client.Subscriber), or exports lazily by a string key."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not module.is_file():
            continue
        rest = parts[i:]
        return not rest or rest[0] in _top_level_names(module)
    return False


def _top_level_names(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
            if isinstance(node.value, ast.Dict):  # lazy exports: {"Name": "module", ...}
                keys = [k for k in node.value.keys if isinstance(k, ast.Constant)]
                names.update(k.value for k in keys if isinstance(k.value, str))
    return names


_OUTSIDE = ("../" + "shared", "DESIGN" + ".md", "RELIABILITY" + ".md", "HybridViT" + ".md")


def test_no_tracked_file_refers_to_documents_outside_the_repository() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=30, check=True)
    hits = []
    for name in listed.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (checkpoints, MiniSEED)
        for needle in _OUTSIDE:
            if needle in text:
                hits.append(f"{name}: {needle}")
    assert not hits, f"tracked files refer to documents outside the repository: {hits}"
