"""Two tiers: tests/unit is pure (no Kafka), tests/integration needs the real broker that
`make test` starts (or the cluster of SHELFQ_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
