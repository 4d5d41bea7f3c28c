"""The project's text: names that mean something to a reader, links that resolve, a short README.

- No run numbers or note names in the project's text: "session N", "issue N", the seed notes'
  file names and helper ids mean nothing to a reader. Name things by what they are ("the papers'
  EM table", "matched random controls", "the code before the one-copy model pool").
- Every relative link in README.md and docs/*.md points to a file that exists (and, for
  `page.md#anchor`, to a heading of that page).
- The README stays a five-minute read (<= 200 lines) with the two set-up commands verbatim, and
  its Python example runs as printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".md", ".py", ".sh", ".toml", ".txt", ".yaml")
SKIP_UNDER = ("lab/data/datasets/",)   # shipped data, not prose

# Built from pieces so that this file does not match itself.
_WORDS = {
    "session": "[Ss]ession" + "s?[ -]?\\d+",
    "issue": "[Ii]ssue" + "s?[ -]?#?\\d+",
    "seed note": "[Ss]eed" + "[ _-]?00\\d",
    "helper id": "helper" + " h\\d+",
}
MENTION = re.compile(r"\b(" + "|".join(_WORDS.values()) + r")\b")

# Files that may carry such mentions, each with how many of its lines may match. Empty: every
# mention has been renamed. It must stay empty; a file that gains a mention fails, and an entry
# that allows more than its file still has fails too (lower it, or remove it at 0).
ALLOWED: dict[str, int] = {}
# Prose a reader reads first: never allowed, whatever the list above says.
PROSE = ("README.md", "docs/", "benchmarks/README.md")

TWO_COMMANDS = (
    "bash scripts/setup.sh && .venv/bin/emlab study",
    'bash scripts/setup.sh --test && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -m "slow or not slow" -q',
)
README_MAX_LINES = 200


def project_files() -> list[str]:
    """Tracked files plus new ones git does not ignore (so a page is checked before its commit)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no file list")
    return sorted(p for p in set(out.splitlines())
                  if p.endswith(SUFFIXES) and not p.startswith(SKIP_UNDER) and (REPO / p).is_file())


def mentions(path: str) -> list[tuple[int, str]]:
    text = (REPO / path).read_text(encoding="utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if MENTION.search(line)]


def test_the_pattern_finds_what_it_should_and_not_more():
    hits = ["in sess" + "ion 3", "Session" + "-2 code", "issue " + "11", "Issue" + " #14", "issue" + "-13 targets",
            "seed" + " 000's vector", "the seed" + "-003 table", '"seed' + '003"', "helper" + " h12"]
    misses = ["session", "the issue's baseline", "seed 0", "seeds 0 1", "_seed" + "003(", "issues", "h12"]
    assert all(MENTION.search(t) for t in hits), [t for t in hits if not MENTION.search(t)]
    assert not any(MENTION.search(t) for t in misses), [t for t in misses if MENTION.search(t)]


def test_no_session_issue_or_seed_note_names_in_project_text():
    found = {p: m for p in project_files() if (m := mentions(p))}
    bad = [f"{p}:{n}: {line[:120]}" for p, m in found.items()
           if p.startswith(PROSE) or len(m) > ALLOWED.get(p, 0) for n, line in m]
    assert not bad, ("name these by what they are (allowed counts are in ALLOWED):\n" + "\n".join(bad))


def test_the_allow_list_only_shrinks():
    """An entry that allows more lines than its file has must be lowered (or removed at 0)."""
    files = set(project_files())
    stale = {p: (n, len(mentions(p)) if p in files else 0) for p, n in ALLOWED.items()}
    stale = {p: v for p, v in stale.items() if v[1] < v[0]}
    assert not stale, "lower these ALLOWED entries to the count now found (remove at 0): " + ", ".join(
        f"{p} {allowed} -> {now}" for p, (allowed, now) in sorted(stale.items()))
    assert not any(p.startswith(PROSE) for p in ALLOWED), "README, docs and benchmarks/README are never allowed"
    assert not ALLOWED, "every mention is renamed: name new ones by what they are instead of allowing them"


# --------------------------------------------------------------------------- links

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def markdown_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks (links in code are not links)."""
    out, fenced = [], False
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter = Counter()
    out = set()
    for _, line in prose_lines(page):
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            s = slug(m.group(1))
            out.add(s if not seen[s] else f"{s}-{seen[s]}")
            seen[s] += 1
    return out


def relative_links(page: Path) -> list[tuple[int, str]]:
    return [(n, target) for n, line in prose_lines(page) for target in LINK.findall(line)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]   # http:, https:, mailto: ...


def test_slug_matches_github_anchors():
    assert slug("What model diffing shows, and what did not reproduce") == \
        "what-model-diffing-shows-and-what-did-not-reproduce"
    assert slug("Qwen2.5-Coder-0.5B-Instruct (float32, one H200)") == "qwen25-coder-05b-instruct-float32-one-h200"
    assert slug("Sampling at the protocol's volume (`sampling.py`)") == "sampling-at-the-protocols-volume-samplingpy"


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for n, target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.relative_to(REPO)}:{n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(REPO)}:{n}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / t.partition("#")[0]).resolve() for _, t in relative_links(REPO / "README.md")}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages not reachable from README.md in one click: {missing}"


# --------------------------------------------------------------------------- the README

def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_has_the_two_setup_commands_verbatim():
    lines = readme().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    for command in TWO_COMMANDS:
        assert command in lines, f"README.md lacks the set-up command line, verbatim: {command}"


def readme_python_example() -> str:
    section = readme().split("## In Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    """The README's example, run as a user would (a fresh process in an empty folder): it builds a
    cache, fits directions, and prints the steered score shift of the direction and of a random
    control, each as an Estimate whose value lies within its interval."""
    script = tmp_path / "example.py"
    script.write_text(readme_python_example())
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    number = r"(-?\d+\.\d+)"
    printed = re.findall(rf"^(\S+) {number} \[{number}, {number}\]$", run.stdout, flags=re.M)
    assert [label for label, *_ in printed] == ["mean_diff:add", "random0:add"], run.stdout
    for _, value, lo, hi in printed:
        assert float(lo) <= float(value) <= float(hi)
    assert list((tmp_path / "cache").glob("*.h5")), "the example's cache was not written where it says"
