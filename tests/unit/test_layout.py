"""Import arrows flow one way: streams -> contracts, learner -> contracts,
agents -> learner and contracts, frontend -> contracts, simulator -> frontend and contracts;
evaluation (which replays the served policies offline) -> agents, learner, simulator and
contracts; nothing but the command line and evaluation imports agents."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("contracts", "streams", "learner", "agents", "frontend", "simulator", "evaluation", "shelfq")
ALLOWED = {
    "contracts": {"contracts"},
    "streams": {"contracts", "streams"},
    "learner": {"contracts", "learner"},
    "agents": {"contracts", "learner", "agents"},
    "frontend": {"contracts", "frontend"},
    "simulator": {"contracts", "frontend", "simulator"},
    "evaluation": {"contracts", "learner", "agents", "simulator", "evaluation"},
    "shelfq": set(PARTS),  # the command line composes everything
}


def imported_parts(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PARTS}
    return found


@pytest.mark.parametrize("part", PARTS)
def test_imports_flow_one_way(part: str) -> None:
    files = sorted((ROOT / part).rglob("*.py"))
    assert files, f"{part}/ has no modules"
    wrong = {str(f.relative_to(ROOT)): imported_parts(f) - ALLOWED[part] for f in files}
    assert {f: parts for f, parts in wrong.items() if parts} == {}


def test_top_level_layout() -> None:
    for name in ("streams", "agents", "learner", "deploy", "tests", "docs", "contracts"):
        assert (ROOT / name).is_dir(), name
    for name in ("pyproject.toml", "Makefile", "README.md", ".ci/run", "deploy/kafka/pom.xml",
                 "deploy/kafka/server.properties", "deploy/kafka/log4j2.properties"):
        assert (ROOT / name).is_file(), name
