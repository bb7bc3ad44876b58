"""One import namespace, and import arrows that flow one way.

Everything is ``shelfq.*``. The parts keep DESIGN.md's places at the top of the repository and are
linked into ``shelfq/``; their arrows: streams -> contracts, learner -> contracts,
agents -> learner and contracts, frontend -> contracts, simulator -> frontend and contracts;
evaluation (which replays the served policies offline) -> agents, learner, simulator and
contracts. The rooms of ``shelfq/`` itself sit above the parts, and no part imports a room:
ops (broker, topics, ports, shipped files) -> contracts; bench and demo -> ops and any part;
cli, the command line, -> everything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("contracts", "streams", "learner", "agents", "frontend", "simulator", "evaluation")
ROOMS = ("ops", "bench", "demo", "cli")
EVERYTHING = set(PARTS) | set(ROOMS)
ALLOWED = {
    "contracts": {"contracts"},
    "streams": {"contracts", "streams"},
    "learner": {"contracts", "learner"},
    "agents": {"contracts", "learner", "agents"},
    "frontend": {"contracts", "frontend"},
    "simulator": {"contracts", "frontend", "simulator"},
    "evaluation": {"contracts", "learner", "agents", "simulator", "evaluation"},
    "ops": {"contracts", "ops"},
    "bench": set(PARTS) | {"ops", "bench"},
    "demo": set(PARTS) | {"ops", "bench", "demo"},
    "cli": EVERYTHING,
}


def imported(path: Path) -> set[str]:
    """The parts and rooms a module imports; ``outside:NAME`` for a part imported by its old
    top-level name, which a wheel does not have."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            head, *rest = name.split(".")
            if head in PARTS:
                found.add(f"outside:{head}")
            elif head == "shelfq" and rest and rest[0] in EVERYTHING:
                found.add(rest[0])
    return found


def modules_of(unit: str) -> list[Path]:
    return sorted((ROOT / unit if unit in PARTS else ROOT / "shelfq" / unit).rglob("*.py"))


@pytest.mark.parametrize("unit", [*PARTS, *ROOMS])
def test_imports_flow_one_way(unit: str) -> None:
    files = modules_of(unit)
    assert files, f"{unit} has no modules"
    wrong = {str(f.relative_to(ROOT)): imported(f) - ALLOWED[unit] for f in files}
    assert {f: units for f, units in wrong.items() if units} == {}


def test_tests_and_experiments_use_the_namespace() -> None:
    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "experiments").rglob("*.py"))
    wrong = {str(f.relative_to(ROOT)): {u for u in imported(f) if u.startswith("outside:")} for f in files}
    assert {f: units for f, units in wrong.items() if units} == {}


def test_the_shelfq_folder_is_links_and_rooms() -> None:
    """``shelfq/`` holds a link to each part and to deploy/, the rooms, and no loose module but
    its ``__init__`` and ``__main__``: a new module belongs to a room or a part."""
    for name in (*PARTS, "deploy"):
        link = ROOT / "shelfq" / name
        assert link.is_symlink() and link.resolve() == ROOT / name, name
    for room in ROOMS:
        assert (ROOT / "shelfq" / room / "__init__.py").is_file(), room
    assert sorted(p.name for p in (ROOT / "shelfq").glob("*.py")) == ["__init__.py", "__main__.py"]


def test_top_level_layout() -> None:
    for name in ("streams", "agents", "learner", "deploy", "tests", "docs", "contracts"):
        assert (ROOT / name).is_dir() and not (ROOT / name).is_symlink(), name
    for name in ("pyproject.toml", "Makefile", "README.md", ".ci/run", "deploy/kafka/pom.xml",
                 "deploy/kafka/server.properties", "deploy/kafka/log4j2.properties"):
        assert (ROOT / name).is_file(), name
