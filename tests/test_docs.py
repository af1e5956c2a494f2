"""Every reference to the project's documents resolves inside the repository.

A clone of adloop is all a reader has, so the code and the docs may cite only files that ship with it:
``docs/...`` paths, relative Markdown links, and ``§`` sections of ``docs/paper.md`` (with ``Q`` rows of
its §8 table). Notes kept outside the repository are not cited at all.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".jsonl", ".cfg", ""}
DOC_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*\w")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)(?:, Q(\d+))?")
# Built from parts so this file does not match itself.
OUTSIDE = [re.compile(p) for p in ("DESIGN" + r"\.md", "paper" + "-notes", r"shared" + "/docs", r"\.\./" + "shared")]


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        paths = [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        paths = [p for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def _paper_sections() -> tuple[set[str], set[str]]:
    text = (ROOT / "docs" / "paper.md").read_text()
    sections = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    questions = set(re.findall(r"^\| Q(\d+) \|", text, flags=re.M))
    return sections, questions


def test_docs_paths_exist():
    missing = []
    for path in _tracked_text_files():
        for ref in DOC_PATH.findall(_read(path)):
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, "references to missing docs:\n" + "\n".join(missing)


def test_relative_markdown_links_resolve():
    broken = []
    for path in _tracked_text_files():
        if path.suffix != ".md":
            continue
        for target in MD_LINK.findall(_read(path)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_paper_sections_cited_exist():
    sections, questions = _paper_sections()
    assert {"1.1", "3.2", "5.3", "8"} <= sections and len(questions) >= 18
    unknown = []
    for path in _tracked_text_files():
        for section, question in SECTION.findall(_read(path)):
            if section not in sections or (question and (section != "8" or question not in questions)):
                unknown.append(f"{path.relative_to(ROOT)}: §{section}" + (f", Q{question}" if question else ""))
    assert not unknown, "sections not in docs/paper.md:\n" + "\n".join(unknown)


def test_nothing_cites_notes_outside_the_repository():
    found = []
    for path in _tracked_text_files():
        text = _read(path)
        found += [f"{path.relative_to(ROOT)}: {p.pattern}" for p in OUTSIDE if p.search(text)]
    assert not found, "citations of files that are not in the repository:\n" + "\n".join(found)
