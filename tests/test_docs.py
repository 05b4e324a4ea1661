"""Every citation of the project's own docs names something that exists.

Code, README, model_repository, deploy and tests cite docs/ as `docs/NAME.md` or `docs/NAME.md#anchor`
(GitHub's heading anchors); markdown files may also link to them relatively, and docs/ files link to each
other as `NAME.md#anchor`. Each such reference must name a file under docs/ and, with an anchor, a heading
of that file. Citations by section number, and the old bare names (`MODEL.md` without `docs/`), are
refused: nothing tells a reader where those are.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CITED = ("MODEL.md", "SERVING.md", "GPU.md")  # the docs the code has always cited
TEXT_SUFFIXES = {".py", ".md", ".pbtxt", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini", ".jinja", ".json"}

PLAIN = re.compile(r"(?<![\w/.-])(?:\./)?docs/([\w.-]+\.md)(#[\w-]+)?")  # repository-relative citation
QUOTED = re.compile(r"(?<![\w/.-])(?:\./)?docs/([\w.-]+\.md),? \"([^\"\n]+)\"")  # docs/GPU.md "Pins"
LINK = re.compile(r"\]\(([^)\s#]*\.md)?(#[^)\s]*)?\)")  # markdown link, relative to its file
NUMBERED = re.compile(r"\b[\w/.-]*\.md,? sections? \d")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (what a checkout holds)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
        paths = [ROOT / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):  # no git: walk the tree, minus what .gitignore names
        skip = {".git", ".venv", ".venv-gpu-models", "build", "__pycache__", ".pytest_cache"}
        paths = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    keep = []
    for path in paths:
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name.startswith("Dockerfile")
                               or path.relative_to(ROOT).as_posix() == ".ci/run"):  # fmt: skip
            keep.append(path)
    return sorted(keep)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@lru_cache(maxsize=None)
def headings(doc: Path) -> tuple[frozenset, frozenset]:
    """(anchors, heading texts) of a markdown file; repeated headings get -1, -2, ... as on GitHub."""
    anchors, texts, seen, fenced = set(), set(), {}, False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            text = match.group(2)
            base = slug(text)
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchors.add(base if count == 0 else f"{base}-{count}")
            texts.add(text.strip())
    return frozenset(anchors), frozenset(texts)


def check_target(doc: Path, anchor: str | None, heading: str | None = None) -> str | None:
    """Why a reference to doc (#anchor, or "heading") is broken, or None."""
    if not doc.is_file():
        known = ", ".join(sorted(p.name for p in DOCS.glob("*.md"))) or "none"
        return f"no such file under docs/ (there: {known})"
    anchors, texts = headings(doc)
    if anchor and anchor.lstrip("#") not in anchors:
        return f"{doc.name} has no heading with anchor {anchor} (anchors: {', '.join(sorted(anchors))})"
    if heading and heading not in texts:
        return f"{doc.name} has no heading {heading!r}"
    return None


def problems_in(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    relative = path.relative_to(ROOT).as_posix()
    in_docs = path.parent == DOCS
    bare_names = {p.name for p in DOCS.glob("*.md") if p.name != "README.md"} | set(CITED)
    bare = re.compile(r"(?<![\w/.\[-])(" + "|".join(map(re.escape, sorted(bare_names))) + r")\b")
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{relative}:{number}"
        for match in PLAIN.finditer(line):
            why = check_target(DOCS / match.group(1), match.group(2))
            if why:
                found.append(f"{where}: {match.group(0)}: {why}")
        for match in QUOTED.finditer(line):
            why = check_target(DOCS / match.group(1), None, match.group(2))
            if why:
                found.append(f"{where}: {match.group(0)}: {why}")
        if path.suffix == ".md":
            for match in LINK.finditer(line):
                target, anchor = match.group(1), match.group(2)
                if target is None and not in_docs:
                    continue  # a same-file anchor outside docs/ is not a docs citation
                doc = path if target is None else (path.parent / target).resolve()
                if doc.parent != DOCS and "docs/" not in (target or ""):
                    continue  # a link to some other markdown file
                why = check_target(doc, anchor)
                if why:
                    found.append(f"{where}: {match.group(0)}: {why}")
        if not in_docs:
            for match in NUMBERED.finditer(line):
                found.append(f"{where}: {match.group(0)!r}: cite a heading (docs/NAME.md#anchor), not a section number")
            for match in bare.finditer(line):
                found.append(f"{where}: bare {match.group(1)}: write docs/{match.group(1)} (with #anchor)")
    return found


def test_the_cited_docs_exist():
    missing = [name for name in CITED if not (DOCS / name).is_file()]
    assert not missing, f"docs/ lacks {', '.join(missing)}"


def test_every_docs_reference_resolves():
    files = repository_files()
    assert any(p.parent == DOCS for p in files), "the file listing found nothing under docs/"
    problems = [problem for path in files if path != Path(__file__).resolve() for problem in problems_in(path)]
    assert not problems, "broken docs references:\n  " + "\n  ".join(problems)


def test_docs_cite_no_outside_folder():
    """The docs are the project's own: they point at nothing outside the repository."""
    offenders = [f"{p.relative_to(ROOT)}" for p in DOCS.glob("*.md")
                 if re.search(r"\.\./shared|/work/|shared/docs", p.read_text(encoding="utf-8"))]  # fmt: skip
    assert not offenders, f"docs pointing outside the repository: {offenders}"


@pytest.mark.parametrize(
    "heading, anchor",
    [("Frame arithmetic", "frame-arithmetic"), ("Bundled tritonserver (CPU)", "bundled-tritonserver-cpu"),
     ("LLM and LoRA merge", "llm-and-lora-merge"), ("The `tensorrtllm` decoder", "the-tensorrtllm-decoder"),
     ("What is verified where", "what-is-verified-where")],
)  # fmt: skip
def test_slug_follows_github(heading, anchor):
    assert slug(heading) == anchor


def test_the_checker_catches_broken_references(tmp_path, monkeypatch):
    """The checker itself: a missing file, a missing anchor, a section number and a bare name are all named."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "MODEL.md").write_text("# Model\n\n## Frame arithmetic\n\n```\n## not a heading\n```\n", encoding="utf-8")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "DOCS", docs)
    headings.cache_clear()
    code = tmp_path / "code.py"
    code.write_text("# docs/MODEL.md#frame-arithmetic ok\n# docs/NOPE.md\n# docs/MODEL.md#not-a-heading\n"
                    "# docs/MODEL.md section 3\n# see MODEL.md\n", encoding="utf-8")  # fmt: skip
    problems = problems_in(code)
    headings.cache_clear()
    assert len(problems) == 4, problems
    assert "code.py:2" in problems[0] and "no such file" in problems[0]
    assert "code.py:3" in problems[1] and "#not-a-heading" in problems[1]
    assert "code.py:4" in problems[2] and "section number" in problems[2]
    assert "code.py:5" in problems[3] and "bare MODEL.md" in problems[3]
