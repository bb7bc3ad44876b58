"""The packages type-check under their mypy config (pyproject.toml), so `make test` runs the check.

Not strict: annotated functions are checked, unannotated ones are not, and libraries without
types are Any. A `type: ignore` that hides nothing is itself an error (warn_unused_ignores), so
the ignores that are left each still hide something. Only files git tracks are checked (the
config's packages, less the work in progress of a shared working tree); a fresh clone checks
them all."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("contracts", "streams", "learner", "agents", "frontend", "simulator", "evaluation")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                                reason="mypy is not installed (pip install -e '.[test]')")


def tracked_sources() -> list[str]:
    """The package's Python files that git tracks, or the package itself outside a checkout.
    A part's files are named through its link in shelfq/, so mypy names their modules
    shelfq.PART.* as the code imports them."""
    listed = subprocess.run(["git", "ls-files", "--", "shelfq/*.py", *(f"{p}/*.py" for p in PARTS)], cwd=ROOT,
                            capture_output=True, text=True)
    files = [f if f.startswith("shelfq/") else f"shelfq/{f}" for f in listed.stdout.split()]
    files = [f for f in files if (ROOT / f).is_file()]
    return files if listed.returncode == 0 and files else ["shelfq"]


def test_mypy_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", *tracked_sources()], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"mypy found:\n{result.stdout}{result.stderr}"


def test_mypy_catches_a_wrong_type(tmp_path: Path) -> None:
    """The check is live: a module that returns text where it declares an int fails it."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def port() -> int:\n    return 'ninety'\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(wrong)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Incompatible return value type" in result.stdout, result.stdout + result.stderr
