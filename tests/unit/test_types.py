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
import tempfile
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


class BackgroundCheck:
    """A command started once, ahead of the test that reads its outcome."""

    def __init__(self, *argv: str) -> None:
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.output = tempfile.TemporaryFile()

    def start(self) -> None:
        if self.proc is None:
            self.proc = subprocess.Popen([*self.argv, *tracked_sources()], cwd=ROOT, stdout=self.output,
                                         stderr=subprocess.STDOUT)

    def outcome(self, timeout: float) -> tuple[int, str]:
        """Its exit status and output, waiting for it (started now if it was not)."""
        self.start()
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.output.seek(0)
        text = self.output.read().decode(errors="replace")
        self.output.close()
        return code, text


MYPY = BackgroundCheck(sys.executable, "-m", "mypy")


def early_start() -> None:
    """Called by tests/conftest.py once the tests are collected: the check runs meanwhile."""
    if importlib.util.find_spec("mypy") is not None:
        MYPY.start()


def test_mypy_finds_nothing() -> None:
    code, output = MYPY.outcome(timeout=600)
    assert code == 0, f"mypy found:\n{output}"


def test_mypy_catches_a_wrong_type(tmp_path: Path) -> None:
    """The check is live: a module that returns text where it declares an int fails it."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def port() -> int:\n    return 'ninety'\n")
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(wrong)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Incompatible return value type" in result.stdout, result.stdout + result.stderr
