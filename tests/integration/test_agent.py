"""The scoring agent against the real broker: requests in, slates out; a new model is served
without a restart and a corrupt one is refused; replicas share the load; bad requests go to dlq;
excluded and already bought items stay out of slates."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shelfq.contracts.events import DeadLetter, Interaction, Item, Request, Slate, UserState, decode, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.frontend.client import ShopClient
from shelfq.learner.artifact import model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork
from tests.integration.conftest import ShelfqProcess, read_topic

CATALOG = [Item(item_id=f"sku-{i}", title=f"item {i}", category=f"c{i % 3}", ts=1.0) for i in range(20)]
SMALL = LearnerConfig(hash_buckets=256, context_buckets=16, embedding_dim=8, hidden_dim=8, history_length=4)


class AgentProcess(ShelfqProcess):
    def __init__(self, settings: Settings, log: Path, replica: int = 0, env: dict[str, str] | None = None) -> None:
        super().__init__(["agent", "--replica", str(replica), "--max-seconds", "150"], settings, log, env)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.stop(30)


def produce_catalog(settings: Settings) -> None:
    producer = ReliableProducer(settings)
    for item in CATALOG:
        producer.produce(settings.topic("items"), encode(item), item.item_id)
    producer.flush()


def send_requests(settings: Settings, n: int, tag: str, **fields) -> list[str]:
    producer = ReliableProducer(settings)
    ids = []
    for i in range(n):
        req = Request(request_id=f"{tag}-{i}", user_id=f"u-{tag}-{i}", ts=time.time(), slate_size=3, **fields)
        producer.produce(settings.topic("requests"), encode(req), req.user_id)
        ids.append(req.request_id)
    producer.flush()
    return ids


def publish_model(settings: Settings, version: int, value: bytes | None = None) -> None:
    net_value, headers = model_message(QNetwork(SMALL), SMALL, version=version)
    producer = ReliableProducer(settings, **{"message.max.bytes": settings.model_max_bytes})
    producer.produce(settings.topic("models"), value if value is not None else net_value, "dqn", headers=headers.to_headers())
    producer.flush()


def read(settings: Settings, topic: str, until: Callable[[list[bytes]], bool], timeout: float = 60.0) -> list[bytes]:
    return read_topic(settings, topic, until, timeout)


def slates_for(settings: Settings, ids: list[str], timeout: float = 60.0) -> dict[str, Slate]:
    wanted = set(ids)

    def by_id(values: list[bytes]) -> dict[str, Slate]:
        return {s.request_id: s for s in (decode(v, Slate) for v in values) if s.request_id in wanted}

    return by_id(read(settings, "slates", lambda v: set(by_id(v)) >= wanted, timeout))


def test_requests_in_slates_out_and_a_new_model_is_served_without_a_restart(settings: Settings, agents, tmp_path: Path) -> None:
    produce_catalog(settings)
    # Past the deadline is what waited in Kafka for longer (agents.deadline): sent before the agent starts.
    stale = Request(request_id="stale", user_id="u-stale", ts=time.time(), slate_size=3)
    producer = ReliableProducer(settings)
    producer.produce(settings.topic("requests"), encode(stale), stale.user_id)
    producer.flush()
    time.sleep(2.5)
    agent = AgentProcess(settings, tmp_path / "agent.log")
    agents.append(agent)
    agent.wait(lambda: agent.metric("shelfq_agent_cache_entries", 'cache="items"') >= len(CATALOG), "the items cache")

    before = slates_for(settings, send_requests(settings, 10, "before"))
    assert len(before) == 10
    for slate in before.values():
        assert slate.policy in ("random", "popularity") and slate.model_version is None
        assert len(slate.items) == 3 and set(slate.items) <= {i.item_id for i in CATALOG}
    chosen = slates_for(settings, send_requests(settings, 3, "listed", candidates=["sku-1", "sku-2", "sku-3", "sku-4"]))
    assert all(set(s.items) <= {"sku-1", "sku-2", "sku-3", "sku-4"} for s in chosen.values())

    agent.wait(lambda: agent.metric("shelfq_agent_requests_total", 'outcome="skipped"') >= 1, "the stale request skipped")

    publish_model(settings, version=1)
    agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 1, "model version 1")
    after = slates_for(settings, send_requests(settings, 10, "after"))
    assert {(s.policy, s.model_version) for s in after.values()} == {("dqn", 1)}
    assert all(0 < p <= 1 for s in after.values() for p in s.propensities)

    publish_model(settings, version=2, value=b"\x80\x04not safetensors")  # corrupt: refused, v1 serves on
    agent.wait(lambda: agent.metric("shelfq_agent_models_total", 'outcome="rejected"') >= 1, "the corrupt model refused")
    still = slates_for(settings, send_requests(settings, 5, "still"))
    assert "stale" not in slates_for(settings, ["stale"], timeout=3), "a request past its deadline is never answered"
    assert {s.model_version for s in still.values()} == {1}
    letters = [decode(v, DeadLetter) for v in read(settings, "dlq", lambda v: len(v) >= 1, timeout=20)]
    assert any(d.topic == settings.topic("models") and "not safetensors" in d.detail for d in letters)

    publish_model(settings, version=3)
    agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 3, "model version 3")
    assert {s.model_version for s in slates_for(settings, send_requests(settings, 5, "v3")).values()} == {3}


def test_two_replicas_split_the_load_and_bad_requests_go_to_dlq(settings: Settings, agents, tmp_path: Path) -> None:
    produce_catalog(settings)
    a, b = AgentProcess(settings, tmp_path / "a.log", 0), AgentProcess(settings, tmp_path / "b.log", 1)
    agents += [a, b]
    ids = []
    deadline = time.monotonic() + 90
    # Keep asking until both replicas have answered some (the group settles after both join).
    while not (a.metric("shelfq_agent_requests_total", 'outcome="answered"') > 0
               and b.metric("shelfq_agent_requests_total", 'outcome="answered"') > 0):
        assert time.monotonic() < deadline, f"the replicas did not share: {a.log.read_text()[-1500:]}{b.log.read_text()[-1500:]}"
        ids += send_requests(settings, 20, f"r{len(ids)}")
        time.sleep(0.5)
    def skipped() -> float:
        return sum(x.metric("shelfq_agent_requests_total", 'outcome="skipped"') for x in (a, b))

    def answered(values: list[bytes]) -> set[str]:
        return {s.request_id for s in (decode(v, Slate) for v in values)} & set(ids)

    values = read(settings, "slates", lambda v: len(answered(v)) + skipped() >= len(ids))
    # Each request is answered, or counted as too old (requests queued while the group settled).
    assert len(answered(values)) + skipped() >= len(ids)

    producer = ReliableProducer(settings)
    producer.produce(settings.topic("requests"), b'{"schema": "shelfq.request.v1", "request_id": "x", "slate_size": 500}', "u-1")
    producer.flush()
    letters = [decode(v, DeadLetter) for v in read(settings, "dlq", lambda v: len(v) >= 1, timeout=30)]
    bad = [d for d in letters if d.topic == settings.topic("requests")]
    assert bad and bad[0].reason == "invalid" and bad[0].component == "agent"


def test_excluded_and_already_bought_items_never_reach_a_slate(settings: Settings, agents, tmp_path: Path) -> None:
    produce_catalog(settings)
    # The buyer bought 17 of the 20 items: popularity (the fallback) ranks exactly those first.
    bought = [item.item_id for item in CATALOG[:17]]
    buyer = UserState(user_id="u-buyer", ts=time.time(),
                      history=[Interaction(item_id=i, event="purchase", ts=time.time() - 60 + n) for n, i in enumerate(bought)])
    producer = ReliableProducer(settings)
    producer.produce(settings.topic("user-state"), encode(buyer), buyer.user_id)
    producer.flush()
    agent = AgentProcess(settings, tmp_path / "agent.log", env={"SHELFQ_AGENT_EXCLUDE_SEEN": "purchased"})
    agents.append(agent)
    agent.wait(lambda: agent.metric("shelfq_agent_cache_entries", 'cache="items"') >= len(CATALOG)
               and agent.metric("shelfq_agent_cache_entries", 'cache="users"') >= 1, "the items and users caches")

    def ask_buyer(tag: str) -> list[Slate]:
        ids = []
        for i in range(10):
            req = Request(request_id=f"{tag}-{i}", user_id=buyer.user_id, ts=time.time(), slate_size=5)
            producer.produce(settings.topic("requests"), encode(req), req.user_id)
            ids.append(req.request_id)
        producer.flush()
        return list(slates_for(settings, ids).values())

    unbought = {item.item_id for item in CATALOG[17:]}
    for slate in ask_buyer("buyer"):
        assert slate.policy == "popularity"
        assert set(slate.items) == unbought, "the three items not bought, in a shorter slate, never a bought one"
        assert len(slate.propensities) == 3 and all(0 < p <= 1 for p in slate.propensities)

    # The frontend's exclude, through the shop client: the slate is what is left, shorter than asked.
    async def ask_with_exclude() -> Slate | None:
        with ShopClient(settings) as client:
            return await client.slate(Request(request_id="excl", user_id="u-other", ts=time.time(), slate_size=5,
                                              candidates=["sku-1", "sku-2", "sku-3", "sku-4", "sku-5"],
                                              exclude=["sku-1", "sku-4", "sku-19"]), timeout=30)

    slate = asyncio.run(ask_with_exclude())
    assert slate is not None and set(slate.items) == {"sku-2", "sku-3", "sku-5"}

    # Everything excluded: no slate, a counted and dead-lettered request.
    nothing = Request(request_id="nothing", user_id="u-other", ts=time.time(), candidates=["sku-1"], exclude=["sku-1"])
    producer.produce(settings.topic("requests"), encode(nothing), nothing.user_id)
    producer.flush()
    agent.wait(lambda: agent.metric("shelfq_agent_requests_total", 'outcome="unanswerable"') >= 1, "the unanswerable request")
    letters = [decode(v, DeadLetter) for v in read(settings, "dlq", lambda v: len(v) >= 1, timeout=20)]
    assert any(d.reason == "unanswerable" and "excluded" in d.detail for d in letters)

    # A model serves now; the purchases still stay out.
    publish_model(settings, version=1)
    agent.wait(lambda: agent.metric("shelfq_agent_model_version") == 1, "model version 1")
    for slate in ask_buyer("buyer-dqn"):
        assert slate.policy == "dqn" and set(slate.items) == unbought
    assert "nothing" not in slates_for(settings, ["nothing"], timeout=3)


def publish_policy_model(settings: Settings, policy: str, version: int) -> None:
    config = dataclasses.replace(SMALL, policy=policy)
    value, headers = model_message(QNetwork(config), config, version=version)
    producer = ReliableProducer(settings, **{"message.max.bytes": settings.model_max_bytes})
    producer.produce(settings.topic("models"), value, policy, headers=headers.to_headers())
    producer.flush()


def test_two_arms_answer_each_user_from_its_arm_and_the_join_carries_the_arm(settings: Settings, agents,
                                                                            tmp_path: Path) -> None:
    """Users split by the hash of their id: each user's slates all come from one arm, the arm
    the split names; an arm serves its own model once it arrives (the other its fallback); the
    slates say their arm, and so do the transitions the join makes of them."""
    from shelfq.agents.arms import ArmSplit, parse_arms
    from shelfq.contracts.events import Feedback, Impression, Transition

    arms = "lt=dqn-lt:0.5,my=dqn-my:0.5"
    produce_catalog(settings)
    worker = ShelfqProcess(["streams", "--max-seconds", "200", "--log-level", "info"], settings, tmp_path / "streams.log",
                           {"SHELFQ_JOIN_WINDOW_S": "2", "SHELFQ_JOIN_ALLOWED_LATENESS_S": "0",
                            "SHELFQ_JOIN_IDLE_ADVANCE_S": "2", "SHELFQ_STREAMS_TICK_S": "0.2"})
    agent = AgentProcess(settings, tmp_path / "agent.log", env={"SHELFQ_AGENT_ARMS": arms})
    agents += [agent, worker]
    agent.wait(lambda: agent.metric("shelfq_agent_cache_entries", 'cache="items"') >= len(CATALOG), "the items cache")
    publish_policy_model(settings, "dqn-lt", version=4)  # only the lt arm has a model
    agent.wait(lambda: agent.metric("shelfq_agent_arm_model_version", 'arm="lt"') == 4, "the lt arm's model")
    assert agent.metric("shelfq_agent_model_version") == 0, "not every arm has a model yet"

    producer = ReliableProducer(settings)
    users = [f"u-arm-{i}" for i in range(40)]
    ids = []
    for round_ in range(3):  # each user asks three times, in one batch with the others
        for user in users:
            req = Request(request_id=f"{user}-{round_}", user_id=user, session_id=f"{user}-{round_}", ts=time.time(),
                          slate_size=3)
            producer.produce(settings.topic("requests"), encode(req), user)
            ids.append(req.request_id)
    producer.flush()
    slates = slates_for(settings, ids)
    assert set(slates) == set(ids)

    split = ArmSplit(parse_arms(arms))
    by_user: dict[str, set] = {}
    for s in slates.values():
        by_user.setdefault(s.user_id, set()).add(s.arm)
        assert s.arm == split.arm_of(s.user_id).name
        if s.arm == "lt":
            assert (s.policy, s.model_version) == ("dqn-lt", 4)
        else:
            assert s.policy in ("popularity", "random") and s.model_version is None
    assert all(len(a) == 1 for a in by_user.values()), "a user is served by one arm"
    assert {a for (a,) in by_user.values()} == {"lt", "my"}
    answered_lt = sum(s.arm == "lt" for s in slates.values())
    agent.wait(lambda: agent.metric("shelfq_agent_arm_slates_total", 'arm="lt",policy="dqn-lt"') == answered_lt,
               "the per-arm slate counter")

    # Shown as the agent ranked them, one click and an exit each: the join's transitions carry the arm.
    for s in slates.values():
        common = dict(request_id=s.request_id, user_id=s.user_id, session_id=s.session_id)
        producer.produce(settings.topic("impressions"), encode(Impression(ts=time.time(), items=s.items, **common)), s.user_id)
        producer.produce(settings.topic("feedback"), encode(Feedback(ts=time.time(), event="click", item_id=s.items[0],
                                                                     **common)), s.user_id)
        producer.produce(settings.topic("feedback"), encode(Feedback(ts=time.time(), event="exit", **common)), s.user_id)
    producer.flush()
    wanted = {f"{s.request_id}:{p}" for s in slates.values() for p in range(len(s.items))}

    def transitions(values: list[bytes]) -> dict[str, Transition]:
        return {t.transition_id: t for t in (decode(v, Transition) for v in values) if t.transition_id in wanted}

    got = transitions(read(settings, "transitions", lambda v: set(transitions(v)) >= wanted, timeout=90))
    assert set(got) == wanted, f"{len(got)} of {len(wanted)}: {worker.log.read_text()[-2000:]}"
    assert all(t.arm == slates[t.request_id].arm and t.policy == slates[t.request_id].policy for t in got.values())
    sessions_lt = sum(s.arm == "lt" for s in slates.values())
    worker.wait(lambda: worker.metric("shelfq_streams_arm_sessions_total", 'arm="lt"') == sessions_lt
                and worker.metric("shelfq_streams_arm_clicks_total", 'arm="my"') == len(slates) - sessions_lt,
                "the per-arm counters of the join")
    assert worker.metric("shelfq_streams_arm_reward_total", 'arm="lt"') == sessions_lt  # one click each


def test_an_agent_stopped_by_an_error_leaves_the_unanswered_requests_for_the_next_one(settings: Settings) -> None:
    from shelfq.agents.config import AgentConfig
    from shelfq.agents.service import Agent

    produce_catalog(settings)
    ids = send_requests(settings, 3, "crash")
    config = AgentConfig(metrics_port=0, deadline_s=3600.0)
    first = Agent(settings, config)

    def fail(requests, arrivals=None):  # noqa: ANN001, ANN202 - a fault in the middle of a batch
        raise RuntimeError("fault while answering")

    first.answer = fail  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="fault while answering"):
            first.run(max_seconds=60)
    finally:
        first.close()
    second = Agent(settings, config)  # the same group: it reads on from what was committed
    try:
        second.run(max_seconds=60, max_requests=3)
    finally:
        second.close()
    assert set(slates_for(settings, ids)) == set(ids)


def test_an_agent_reads_its_catalog_before_it_answers_requests_that_waited(settings: Settings, agents,
                                                                           tmp_path: Path) -> None:
    """A restarted agent finds requests waiting: it answers each from the catalog, none of
    them dead-lettered as unanswerable for an items cache not yet read (the chaos run saw it)."""
    from shelfq.contracts.kafka import CompactedReader

    produce_catalog(settings)
    reader = CompactedReader(settings, "agent", "items")
    try:  # what the agent reads first: the whole topic, not what a first poll happens to bring
        assert {r.event.item_id for r in reader.read_to_end(timeout=30)} == {i.item_id for i in CATALOG}
    finally:
        reader.close()
    ids = send_requests(settings, 30, "waiting")
    agent = AgentProcess(settings, tmp_path / "agent.log", env={"SHELFQ_AGENT_DEADLINE_S": "600"})
    agents.append(agent)
    assert set(slates_for(settings, ids)) == set(ids)
    assert agent.metric("shelfq_agent_requests_total", 'outcome="unanswerable"') == 0
