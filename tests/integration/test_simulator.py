"""The frontend client, the simulator and the demo against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer

from shelfq.contracts.events import Feedback, Impression, Item, Request, Slate, decode, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.frontend.client import ShopClient
from shelfq.simulator.runner import SimulateConfig, Simulation
from shelfq.simulator.world import WorldConfig
from tests.integration.conftest import read_topic


def test_client_awaits_the_slate_for_its_request(settings: Settings) -> None:
    """A stand-in agent answers requests in reverse order; each future gets its own slate."""

    async def scenario() -> list[Slate | None]:
        with ShopClient(settings) as client:
            requests = [Request(request_id=f"r{i}", user_id=f"u{i}", ts=1.0) for i in range(3)]
            futures = [client.ask(r) for r in requests]
            client.flush()
            answer(settings, 3)
            answered = await asyncio.gather(*(asyncio.wait_for(f, 30) for f in futures))
            unanswered = await client.slate(Request(request_id="nobody-answers", user_id="u9", ts=1.0), timeout=0.5)
            return [*answered, unanswered]

    *slates, unanswered = asyncio.run(scenario())
    assert [s.request_id for s in slates] == ["r0", "r1", "r2"]
    assert [s.user_id for s in slates] == ["u0", "u1", "u2"]
    assert unanswered is None


def answer(settings: Settings, n: int) -> None:
    consumer = Consumer(settings.confluent_config(**{"group.id": "stand-in-agent", "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.topic("requests")])
    got = []
    while len(got) < n:
        msg = consumer.poll(10)
        assert msg is not None, "the requests never arrived"
        if msg.error() is None:
            got.append(decode(msg.value(), Request))
    consumer.close()
    producer = ReliableProducer(settings)
    for r in reversed(got):
        slate = Slate(request_id=r.request_id, user_id=r.user_id, session_id="s", ts=2.0, items=["a", "b"],
                      scores=[1.0, 0.5], propensities=[1.0, 1.0], policy="stand-in")
        producer.produce(settings.topic("slates"), encode(slate), r.user_id)
    producer.flush()


def test_simulation_without_an_agent_shows_random_slates_with_inline_state(settings: Settings) -> None:
    sim = Simulation(settings, SimulateConfig(sessions=24, duration_s=0, concurrency=6, think_s=0.0,
                                              slate_timeout_s=0.2, metrics_port=0), WorldConfig(items=40, users=4))
    stats = asyncio.run(sim.run())
    assert stats.sessions == 24 and stats.requests == stats.timeouts == stats.slates > 0
    items = [decode(v, Item) for v in read_topic(settings, "items", lambda vs: len(vs) >= 40)]
    assert len({i.item_id for i in items}) == 40 and all(i.category and i.price and i.title for i in items)
    impressions = [decode(v, Impression) for v in read_topic(settings, "impressions", lambda vs: len(vs) >= stats.requests)]
    feedback = [decode(v, Feedback) for v in read_topic(settings, "feedback", lambda vs: len(vs) >= stats.events_sent - 2 * stats.requests)]
    assert len(impressions) == stats.requests
    assert all(i.state is not None and i.policy == "random" and len(i.propensities or []) == 10 for i in impressions)
    kinds = Counter(f.event for f in feedback)
    assert kinds["exit"] == 24 and kinds["click"] == stats.clicks and kinds["purchase"] == stats.purchases
    # A later impression's inline state holds the user's earlier clicks.
    clicked = {(f.user_id, f.item_id) for f in feedback if f.event == "click"}
    in_states = {(i.user_id, h.item_id) for i in impressions for h in i.state.history if h.event == "click"}
    assert in_states and in_states <= clicked


def test_demo_runs_the_pipeline_and_writes_a_report(base_settings: Settings, tmp_path: Path) -> None:
    """A short demo: slates from the agent, transitions from the join, at least two model
    versions from each learner, and a report with every policy. 2.5 minutes: its six processes
    share the cores with the other test process of `make test`, and in 1.5 the learners'
    first models (after start-up, 256 transitions and a 10-s publish interval) could miss the
    live traffic."""
    report = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "shelfq", "demo", "--minutes", "2.5", "--seeds", "2", "--sessions-per-seed", "30",
         "--report-dir", str(report), "--topic-prefix", "test-demo.", "--json"],
        env={**os.environ, "SHELFQ_PARTITIONS": "3"}, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    live = result["live"]
    assert live["slates_by_policy"].get("dqn-longterm", 0) > 0, live
    assert live["transitions"] > 1000
    assert min(live["model_versions"].values()) >= 2 and set(result["model_versions"]) == {"longterm_dqn", "myopic_dqn"}
    assert set(result["policies"]) == {"random", "popularity", "myopic_dqn", "longterm_dqn"}
    cell = result["policies"]["random"]["reward_per_session"]
    assert cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1] and len(cell["per_seed"]) == 2
    text = (report / "report.md").read_text()
    assert "| reward / session |" in text and (report / "comparison.png").stat().st_size > 10_000
    assert "models v" in done.stdout  # the progress lines
