"""Reproducible installs: the venv holds exactly the versions in constraints.txt.

A new upstream release must never change a result unnoticed (a past defect: pip moved to
transformers 5.24, whose renamed cache keyword silently broke position-dependent steering).
setup.sh installs with `-c constraints.txt`; these tests fail whenever what is installed
differs from the lock, so upgrading means `scripts/lock.sh --upgrade`, the tests, a commit.
"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lock():
    spec = importlib.util.spec_from_file_location("emlab_lock", REPO / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_versions_match_constraints():
    lock = _lock()
    installed, locked = lock.closure(), lock.read_constraints()
    assert {"torch", "transformers", "transformer-lens", "peft", "numpy", "h5py", "scikit-learn"} <= set(locked)
    assert lock.differences(installed, locked) == [], "run scripts/lock.sh (and the tests) after upgrading on purpose"
    assert (REPO / "constraints.txt").read_text() == lock.render(installed)


def test_a_changed_release_is_reported(tmp_path):
    lock = _lock()
    locked = lock.read_constraints()
    moved = dict(locked, transformers="5.17.0")
    path = tmp_path / "constraints.txt"
    path.write_text(lock.render(moved))
    assert lock.differences(locked, lock.read_constraints(path)) == [
        f"transformers: constraints.txt 5.17.0, installed {locked['transformers']}"]
    del moved["numpy"]
    assert "numpy: constraints.txt not pinned" in lock.differences(locked, moved)[0]


def test_setup_installs_with_the_constraints():
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert '-c constraints.txt -e ".[dev]"' in setup
    assert 'torch==2.13.0' in setup and _lock().read_constraints()["torch"] == "2.13.0"
