"""The agent's deadline against the real broker: requests from frontends whose clocks are an
hour behind or ahead are answered, requests that waited in Kafka past the deadline are skipped
and counted (agents.deadline)."""

from __future__ import annotations

import time
from pathlib import Path

from shelfq.contracts.events import Request, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from tests.integration.test_agent import CATALOG, AgentProcess, agents, produce_catalog, slates_for  # noqa: F401


def send(settings: Settings, tag: str, n: int, skew_s: float) -> list[str]:
    producer = ReliableProducer(settings)
    ids = []
    for i in range(n):
        req = Request(request_id=f"{tag}-{i}", user_id=f"u-{tag}-{i}", ts=time.time() + skew_s, slate_size=3)
        producer.produce(settings.topic("requests"), encode(req), req.user_id)
        ids.append(req.request_id)
    producer.flush()
    return ids


def test_skewed_frontend_clocks_are_answered_and_requests_that_waited_are_skipped(
        settings: Settings, agents, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    produce_catalog(settings)
    waited = send(settings, "waited", 4, skew_s=0.0)  # correct clocks, but no agent for 2.5 s
    time.sleep(2.5)
    agent = AgentProcess(settings, tmp_path / "agent.log")
    agents.append(agent)
    agent.wait(lambda: agent.metric("shelfq_agent_requests_total", 'outcome="skipped"') >= len(waited),
               "the requests that waited skipped")
    agent.wait(lambda: agent.metric("shelfq_agent_cache_entries", 'cache="items"') >= len(CATALOG), "the items cache")

    behind, ahead = send(settings, "behind", 5, skew_s=-3600.0), send(settings, "ahead", 5, skew_s=3600.0)
    answered = slates_for(settings, behind + ahead, timeout=60)
    assert set(answered) == set(behind + ahead)
    assert all(len(s.items) == 3 for s in answered.values())
    assert not set(waited) & set(slates_for(settings, waited, timeout=3)), "a request past its deadline is answered"
    assert agent.metric("shelfq_agent_requests_total", 'outcome="skipped"') == len(waited)
    assert agent.metric("shelfq_agent_requests_total", 'outcome="answered"') == len(behind + ahead)
    # Latency counts from the broker's append, so neither frontend's clock reaches it.
    assert agent.metric("shelfq_agent_latency_seconds_sum") < 60
    assert "stores its producers' timestamps" not in agent.log.read_text()
