"""The model gate on the real broker: a new version waits in shadow, a good one is promoted and a
bad one held, a version whose live reward falls short is rolled back, an operator's promote and
rollback are checked; every agent serves what model-decisions says, a restarted one too; and
arms serve each its own policy's decided version.

The logged traffic is made here (uniform random slates of two, exact propensities) and goes to
``transitions`` directly: the join is tested elsewhere. Items ``sku-15``..``sku-19`` earn a
click, the others nothing; the good model learned that, the bad one the opposite, and an
untrained model (ties to the first candidate, sku-0) earns almost nothing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from shelfq.contracts.decisions import encode_decision, read_decisions
from shelfq.contracts.errors import ShelfqError
from shelfq.contracts.events import Request, State, Transition, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.evaluation.benchmark import train
from shelfq.evaluation.gate import ledger
from shelfq.evaluation.gate.config import GateConfig
from shelfq.evaluation.gate.service import Gate
from shelfq.learner.artifact import model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork
from shelfq.cli import models as models_cli
from tests.integration.test_agent import CATALOG, AgentProcess, produce_catalog, slates_for

GOOD_ITEMS = {f"sku-{i}" for i in range(15, 20)}
TINY = LearnerConfig(objective="item", gamma=0.0, hash_buckets=256, context_buckets=16, embedding_dim=8, hidden_dim=8,
                     history_length=4, batch_size=64, learning_starts=64, replay_capacity=20_000, item_features=False,
                     affinity=False)
FAST = GateConfig(window=1200, min_impressions=600, positions=1, margin=0.05, min_ess=20, interval_s=0.3,
                  rollback_after_s=1.5, live_window=300, exploration="epsilon", epsilon=0.1, metrics_port=0)


def logged(n: int, tag: str, version: int | None, reward_of=lambda item: float(item in GOOD_ITEMS),
           policy: str = "dqn", seed: int = 0) -> list[Transition]:
    """``n`` impressions of two uniformly random items, labelled as the join labels them."""
    rng = np.random.default_rng(seed)
    ids = [i.item_id for i in CATALOG]
    now = time.time()
    out = []
    for k in range(n):
        slate = [ids[j] for j in rng.choice(len(ids), 2, replace=False)]
        for pos, item in enumerate(slate):
            r = reward_of(item)
            out.append(Transition(
                transition_id=f"{tag}-{k}:{pos}", request_id=f"{tag}-{k}", user_id=f"u-{k % 50}", session_id=f"{tag}-{k}",
                state=State(history=[], context={}), action=item, position=pos, slate=slate, reward=r,
                reward_parts={"click": 1} if r else {}, next_state=State(history=[], context={}), done=True,
                ts_impression=now, ts_emitted=now, propensity=1 / (len(ids) - pos), policy=policy,
                model_version=version))
    return out


def send(settings: Settings, transitions: list[Transition]) -> None:
    producer = ReliableProducer(settings)
    for t in transitions:
        producer.produce(settings.topic("transitions"), encode(t), t.user_id)
    producer.flush()


def trained(sign: float, policy: str = "dqn") -> tuple[bytes, list]:
    """A tiny item-wise model that learned the items' rewards (sign -1: the opposite)."""
    import torch

    logs = [msgspec.structs.replace(t, reward=sign * t.reward) for t in logged(600, "train", None, seed=1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny products: more threads only contend with the broker and the agent
    try:
        dqn = train(dataclasses.replace(TINY, policy=policy), logs, 60)
    finally:
        torch.set_num_threads(threads)
    return dqn.online, dqn.config


def publish(settings: Settings, model: tuple, version: int, policy: str = "dqn") -> None:
    network, config = model
    value, headers = model_message(network, dataclasses.replace(config, policy=policy), version=version)
    producer = ReliableProducer(settings, **{"message.max.bytes": settings.model_max_bytes})
    producer.produce(settings.topic("models"), value, policy, headers=headers.to_headers())
    producer.flush()


def untrained(policy: str = "dqn") -> tuple:
    config = dataclasses.replace(TINY, policy=policy)
    return QNetwork(config), config


@pytest.fixture
def gate(settings: Settings) -> Iterator[Gate]:
    g = Gate(settings, FAST)
    stop = threading.Event()
    thread = threading.Thread(target=g.run, kwargs={"stop": stop}, daemon=True)
    thread.start()
    yield g
    stop.set()
    thread.join(20)
    g.close()


def decided(settings: Settings, predicate, what: str, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = read_decisions(settings, timeout=5).get("dqn")
        if d is not None and predicate(d):
            return d
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {read_decisions(settings).get('dqn')}")


def served_version(settings: Settings, tag: str, n: int = 6) -> set:
    ids = [f"{tag}-{i}" for i in range(n)]
    producer = ReliableProducer(settings)
    for rid in ids:
        producer.produce(settings.topic("requests"), encode(Request(request_id=rid, user_id=f"u-{rid}", ts=time.time(),
                                                                    slate_size=2)), f"u-{rid}")
    producer.flush()
    return {(s.policy, s.model_version) for s in slates_for(settings, ids).values()}


def test_shadow_promote_hold_rollback_and_every_agent_serves_the_decided_version(
        settings: Settings, gate: Gate, tmp_path: Path) -> None:
    produce_catalog(settings)
    good, bad = trained(+1.0), trained(-1.0)
    agent = AgentProcess(settings, tmp_path / "agent.log")
    try:
        agent.wait(lambda: agent.metric("shelfq_agent_cache_entries", 'cache="items"') >= len(CATALOG), "the items cache")
        publish(settings, untrained(), 1)
        d = decided(settings, lambda d: d.action == "adopt", "the first version adopted")
        assert (d.serving_version, d.by) == (1, "gate")
        send(settings, logged(900, "v1", 1))  # traffic of v1: the window fills
        agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 1, "v1 served")

        publish(settings, bad, 2)  # shadow, then held: it earns no more than v1
        d = decided(settings, lambda d: d.status(2) is not None, "a verdict on v2")
        assert (d.action, d.serving_version) == ("hold", 1), d.reason
        assert d.figures.candidate_snips is not None and d.figures.serving_dr is not None
        agent.wait(lambda: agent.metric("shelfq_agent_models_total", 'outcome="loaded"') >= 2, "v2 loaded")
        assert served_version(settings, "after-v2") == {("dqn", 1)}, "a held version never serves"

        publish(settings, good, 3)
        d = decided(settings, lambda d: d.status(3) is not None, "a verdict on v3")
        assert (d.action, d.serving_version, d.good) == ("promote", 3, [1, 3]), d.reason
        assert d.figures.candidate_dr.low >= d.figures.serving_dr.value * (1 - FAST.margin)
        agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 3, "v3 served")
        assert served_version(settings, "after-v3") == {("dqn", 3)}

        publish(settings, bad, 4)  # held too; the newest is now one that must not serve
        decided(settings, lambda d: d.status(4) is not None and d.status(4).status == "held", "v4 held")
        agent.stop(30)
        agent = AgentProcess(settings, tmp_path / "agent2.log")  # a restart reads model-decisions
        agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 3, "v3 served after the restart", timeout=90)
        assert served_version(settings, "restarted") == {("dqn", 3)}

        # v3 earns nothing live: below its estimate's interval for rollback_after_s -> back to v1.
        send(settings, logged(400, "v3-live", 3, reward_of=lambda item: 0.0))
        d = decided(settings, lambda d: d.action == "rollback", "the rollback")
        assert (d.version, d.serving_version, d.status(3).status, d.by) == (3, 1, "rolled_back", "gate")
        assert d.figures.live.value == 0.0
        agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 1, "v1 served again")
        assert gate.metrics.registry.get_sample_value(
            "shelfq_gate_decisions_total", {"policy": "dqn", "outcome": "rolled_back", "by": "gate"}) == 1

        # The operator: the same checks by hand.
        with pytest.raises(ShelfqError, match="not on"):
            models_cli.promote(settings, "dqn", 9, say=lambda _line: None)
        with pytest.raises(ShelfqError, match="held by the gate"):
            models_cli.promote(settings, "dqn", 2, say=lambda _line: None)
        d = models_cli.promote(settings, "dqn", 2, force=True, say=lambda _line: None)
        assert (d.serving_version, d.by, d.forced) == (2, "operator", True)
        agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 2, "the forced promote served")
        d = models_cli.rollback(settings, "dqn", say=lambda _line: None)
        assert d.serving_version == 1 and d.status(2).status == "rolled_back"
        rows = {r["version"]: r["status"] for r in models_cli.listing(settings, "dqn")["versions"]}
        assert rows == {1: "serving", 2: "rolled_back", 3: "rolled_back", 4: "held"}
        agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 1, "v1 after the operator's rollback")
    finally:
        agent.stop(30)


def test_each_arm_serves_its_policys_decided_version(settings: Settings, tmp_path: Path) -> None:
    from shelfq.agents.arms import ArmSplit, parse_arms

    arms = "a=dqn-a:0.5,b=dqn-b:0.5"
    produce_catalog(settings)
    for policy in ("dqn-a", "dqn-b"):
        for version in (1, 2):
            publish(settings, untrained(policy), version, policy=policy)
    producer = ReliableProducer(settings)
    now = time.time()
    for d in (ledger.adopt("dqn-a", 1, now), ledger.promote(ledger.adopt("dqn-b", 1, now), 2, by="operator",
                                                             reason="test", now=now)):
        producer.produce(settings.topic("model-decisions"), encode_decision(d), d.policy)
    producer.flush()
    agent = AgentProcess(settings, tmp_path / "agent.log", env={"SHELFQ_AGENT_ARMS": arms})
    try:
        agent.wait(lambda: agent.metric("shelfq_agent_cache_entries", 'cache="items"') >= len(CATALOG)
                   and agent.metric("shelfq_agent_arm_model_version", 'arm="a"') == 1
                   and agent.metric("shelfq_agent_arm_model_version", 'arm="b"') == 2, "each arm's decided version")
        ids = [f"arm-{i}" for i in range(40)]
        for rid in ids:
            producer.produce(settings.topic("requests"), encode(Request(request_id=rid, user_id=f"u-{rid}", ts=time.time(),
                                                                        slate_size=2)), f"u-{rid}")
        producer.flush()
        slates = slates_for(settings, ids)
        split = ArmSplit(parse_arms(arms))
        want = {"a": ("dqn-a", 1), "b": ("dqn-b", 2)}
        assert {s.arm for s in slates.values()} == {"a", "b"}
        for s in slates.values():
            assert s.arm == split.arm_of(s.user_id).name and (s.policy, s.model_version) == want[s.arm]
    finally:
        agent.stop(30)
