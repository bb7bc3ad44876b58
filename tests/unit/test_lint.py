"""The repository is clean under its ruff config (pyproject.toml), so `make test` runs the lint.

Among its rules is the private-member rule: Faust's and aiokafka's internals are reached from
``streams/faust_internals.py`` only, and the second test checks the config still says so."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                                reason="ruff is not installed (pip install -e '.[test]')")


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_ruff_finds_nothing() -> None:
    result = ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, f"ruff check . found:\n{result.stdout}{result.stderr}"


def test_private_members_of_a_library_are_reached_from_the_faust_module_only() -> None:
    reach_in = "def offsets(consumer):\n    return consumer._committed_offset\n"
    elsewhere = ruff("check", "--output-format", "concise", "--stdin-filename", "streams/app.py", "-", stdin=reach_in)
    assert elsewhere.returncode == 1 and "SLF001" in elsewhere.stdout, elsewhere.stdout + elsewhere.stderr
    door = ruff("check", "--output-format", "concise", "--stdin-filename", "streams/faust_internals.py", "-",
                stdin=reach_in)
    assert door.returncode == 0, door.stdout + door.stderr
