"""Two tiers: tests/unit is pure (no Kafka), tests/integration needs the real broker that
`make test` starts (or the cluster of SHELFQ_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"

try:
    from hypothesis import settings
except ImportError:  # a venv from before the test extra had it: only the property tests need it
    pass
else:
    # Derandomized so a run is reproducible and CI cannot flake; `--hypothesis-profile=long`
    # searches much further (and randomly) when hunting for a bug.
    settings.register_profile("shelfq", derandomize=True, deadline=None, max_examples=60, print_blob=True)
    settings.register_profile("long", deadline=None, max_examples=5_000, print_blob=True)
    settings.load_profile("shelfq")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        # One intra-op thread per worker (`make test` runs one per core): two workers' torch
        # threads on two cores only contend, and spinning OpenMP threads of a loaded machine
        # made a 15-s training test take over 300 s.
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start what a test will only read later (``early_start`` of its module), now: mypy's
    full check takes ~50 s of one core, and the integration tests that run first mostly wait
    on the broker, so it runs beside them on the other core instead of after them. Not under
    pytest-xdist: every worker collects every test, and the one that runs the check starts it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in session.items:
        start = getattr(getattr(item, "module", None), "early_start", None)
        if callable(start):
            start()
