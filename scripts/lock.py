"""Pin emlab's installed dependency closure: what `scripts/lock.sh` writes to constraints.txt.

The closure starts at pyproject.toml's dependencies plus the `dev` extra and follows each
installed distribution's own requirements (markers evaluated for this interpreter, extras
followed where a requirement names them). Every package in it is pinned to the version
installed now, without local tags (`2.13.0+cpu` -> `2.13.0`, which pip matches on any build).
emlab itself and the optional judge server (llama-cpp-python, built from source) are left out.
`tests/test_install.py` checks the venv against the file and the file against the closure.

    python scripts/lock.py            # print the pins
    python scripts/lock.py --check    # exit 1 if the venv differs from constraints.txt
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
EXTRAS = ("dev",)
UNPINNED = {"emlab", "llama-cpp-python"}


def _wanted(req: Requirement, extras: tuple[str, ...]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or ("",)))


def roots() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project.get("optional-dependencies", {}).get(extra, [])]
    return reqs


def closure() -> dict[str, str]:
    """{canonical name: installed version (no local tag)} for everything emlab needs."""
    pins: dict[str, str] = {}
    todo = [(r, tuple(r.extras)) for r in roots()]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if name in UNPINNED or (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed: install emlab first (scripts/setup.sh)")
        pins[name] = dist.version.split("+")[0]
        for line in dist.requires or []:
            sub = Requirement(line)
            if _wanted(sub, extras):
                todo.append((sub, tuple(sub.extras)))
    return dict(sorted(pins.items()))


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def render(pins: dict[str, str]) -> str:
    head = ("# The tested versions of emlab's dependency closure (pip -c constraints.txt).\n"
            "# Regenerate with scripts/lock.sh after upgrading on purpose; tests/test_install.py checks it.\n")
    return head + "".join(f"{name}=={version}\n" for name, version in pins.items())


def differences(installed: dict[str, str], locked: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the locked one (or is not locked, or is gone)."""
    return [f"{name}: constraints.txt {locked.get(name, 'not pinned')}, installed {installed.get(name, 'not needed')}"
            for name in sorted(set(installed) | set(locked)) if installed.get(name) != locked.get(name)]


def main() -> None:
    pins = closure()
    if "--check" in sys.argv:
        bad = differences(pins, read_constraints())
        print("\n".join(bad) or "the venv matches constraints.txt")
        sys.exit(1 if bad else 0)
    sys.stdout.write(render(pins))


if __name__ == "__main__":
    main()
