"""The chaos run's accounting (``shelfq.bench.chaos``): once the faults are over, wait until
every expected output is out and every consumer group has caught up, then count what the
topics hold against what the load sent.

>>> strictly_increasing([1, 2, 5]), strictly_increasing([1, 3, 3]), strictly_increasing([])
(True, False, True)
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

#: Each component's consumer group (under the topic prefix) and the topics it commits.
GROUPS = {"streams": ("streams", ("slates", "impressions", "feedback")),
          "learner": ("learner-dqn", ("transitions",)), "agent": ("agent", ("requests",))}
CATALOG = 30


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def produce_catalog(settings: Any) -> None:
    from shelfq.contracts.events import Item, encode
    from shelfq.contracts.kafka import ReliableProducer

    producer = ReliableProducer(settings)
    for i in range(CATALOG):
        item = Item(item_id=f"i{i}", title=f"item {i}", category=f"c{i % 4}", ts=time.time())
        producer.produce(settings.topic("items"), encode(item), item.item_id)
    producer.flush()


class TopicReader:
    """Every message of a topic from the beginning, read on as it grows (no consumer group)."""

    def __init__(self, settings: Any, topic: str, committed_only: bool = False) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.topic = settings.topic(topic)
        self.consumer = Consumer(settings.confluent_config(**{
            "group.id": "chaos-reader", "enable.auto.commit": False, "enable.partition.eof": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            "fetch.max.bytes": settings.model_max_bytes + (1 << 16),
            "max.partition.fetch.bytes": settings.model_max_bytes + (1 << 16)}))
        partitions = self.consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in partitions])
        self.messages: list[Any] = []

    def drain(self, quiet_s: float = 1.0, limit_s: float = 60.0) -> list[Any]:
        """Read until nothing new came for ``quiet_s``; returns all messages so far."""
        deadline, last = time.monotonic() + limit_s, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            for msg in self.consumer.consume(500, 0.2):
                if msg.error() is None:
                    self.messages.append(msg)
                    last = time.monotonic()
        return self.messages

    def close(self) -> None:
        self.consumer.close()


def group_lag(settings: Any) -> dict[str, int]:
    """Messages each component's group has not committed yet, over the topics it reads."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient(settings.confluent_config())
    lags = {}
    for component, (group, topics) in GROUPS.items():
        name = settings.topic(group)
        tps = [TopicPartition(settings.topic(t), p) for t in topics for p in range(settings.partitions)]
        ends = {(tp.topic, tp.partition): f.result(30).offset
                for tp, f in admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}).items()}
        got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(name)])[name].result(30)
        committed = {(tp.topic, tp.partition): max(0, tp.offset) for tp in got.topic_partitions}
        lags[component] = sum(max(0, end - committed.get(key, 0)) for key, end in ends.items())
    return lags


def _transitions(messages: list[Any], hostile: set[tuple[int, int]]) -> tuple[dict[str, list[Any]], int]:
    from shelfq.contracts.errors import EventError
    from shelfq.contracts.events import Transition, decode

    by_id: dict[str, list[Any]] = defaultdict(list)
    undecodable = 0
    for m in messages:
        if (m.partition(), m.offset()) in hostile:
            continue
        try:
            t = decode(m.value(), Transition)
        except EventError:
            undecodable += 1
            continue
        by_id[t.transition_id].append(t)
    return by_id, undecodable


def settle(chaos: Any, timeout: float) -> dict[str, Any]:
    """Wait until every expected transition is on the topic and every group's lag is 0."""
    started = time.monotonic()
    reader = chaos.transitions_reader = TopicReader(chaos.settings, "transitions")
    expected = set(chaos.load.expected)
    lag: dict[str, int] = {}
    present: set[str] = set()
    while time.monotonic() - started < timeout:
        chaos.watch_crashes()
        present = set(_transitions(reader.drain(quiet_s=0.5, limit_s=10), set())[0])
        if expected <= present:
            lag = group_lag(chaos.settings)
            if not any(lag.values()):
                return {"settled": True, "settle_s": round(time.monotonic() - started, 1), "lag": lag}
        time.sleep(1.0)
    chaos.report(f"chaos: not settled after {timeout:.0f} s: {len(expected - present)} transitions missing, lag {lag}")
    return {"settled": False, "settle_s": round(time.monotonic() - started, 1), "lag": lag or group_lag(chaos.settings)}


def account(chaos: Any, settled: dict[str, Any]) -> dict[str, Any]:
    """The figures of the run (see ``shelfq bench chaos --help``)."""
    settings, load = chaos.settings, chaos.load
    hostile = [h for h in load.hostile if "offset" in h]
    by_origin = {(h["topic"], h["partition"], h["offset"]): h for h in hostile}
    out: dict[str, Any] = dict(settled)
    out.update(_transition_figures(chaos, {(h["partition"], h["offset"]) for h in hostile if h["topic"] == "transitions"}))
    out.update(_dead_letter_figures(settings, load.hostile, by_origin))
    out.update(_request_figures(settings, load.requests))
    out.update(_model_figures(settings, {(h["partition"], h["offset"]) for h in hostile if h["topic"] == "models"}))
    out.update(_history_figures(settings, load.histories))
    out.update(_learner_checkpoint(chaos, len(chaos.transitions_reader.messages)))
    chaos.transitions_reader.close()
    recovered = [r["recovery_s"] for r in chaos.recoveries]
    by_component: dict[str, float] = {}
    for r in chaos.recoveries:
        if r["recovery_s"] is not None and r["fault"] != "start":
            kind = r["component"].split("-")[0]
            by_component[kind] = max(by_component.get(kind, 0.0), r["recovery_s"])
    out.update(
        hostile_crashes=len(chaos.crashes), crashes=chaos.crashes,
        all_recovered=all(r is not None for r in recovered) and settled["settled"],
        recovery_max_s=by_component, recoveries=chaos.recoveries, load_events=load.events, **chaos.notes)
    return out


def _transition_figures(chaos: Any, hostile: set[tuple[int, int]]) -> dict[str, Any]:
    import msgspec

    got, undecodable = _transitions(chaos.transitions_reader.drain(quiet_s=1.0), hostile)
    expected = chaos.load.expected
    wrong = [tid for tid, e in expected.items() if tid in got and (got[tid][0].reward, got[tid][0].done) != (e.reward, e.done)]
    differing = [tid for tid, copies in got.items()
                 if len({msgspec.json.encode(msgspec.structs.replace(c, ts_emitted=0.0)) for c in copies}) > 1]
    missing = sorted(set(expected) - set(got))
    return {"transitions_expected": len(expected), "transitions_present": len(set(expected) & set(got)),
            "transitions_missing": len(missing), "transitions_missing_examples": missing[:10],
            "transitions_wrong_reward": len(wrong), "transitions_unexpected": len(set(got) - set(expected)),
            "transitions_repeated": sum(len(c) - 1 for c in got.values()),
            "transitions_repeated_differing": len(differing), "transitions_undecodable": undecodable}


def _dead_letter_figures(settings: Any, hostile: list[dict[str, Any]], by_origin: dict) -> dict[str, Any]:
    from shelfq.contracts.events import DeadLetter, decode
    from shelfq.bench.chaos_inputs import READERS

    logical = {settings.topic(t): t for t in READERS}
    reader = TopicReader(settings, "dlq")
    letters = [decode(m.value(), DeadLetter) for m in reader.drain()]
    reader.close()
    caught: dict[tuple, set[tuple[str, str]]] = defaultdict(set)
    others: Counter[str] = Counter()
    for d in letters:
        origin = (logical.get(d.topic), d.partition, d.offset)
        if origin in by_origin:
            caught[origin].add((d.component, d.reason))
        else:
            others[f"{d.component}:{d.reason}"] += 1
    reasons: Counter[str] = Counter()
    missed = []
    for h in hostile:
        origin = (h["topic"], h.get("partition"), h.get("offset"))
        for component in READERS[h["topic"]]:
            found = [r for c, r in caught.get(origin, ()) if c == component]
            if found:
                reasons[found[0]] += 1
            else:
                missed.append(f"{h['topic']}/{h['label']} by {component}")
    return {"hostile_injected": len(hostile), "hostile_delivered": len(by_origin),
            "hostile_dead_letters_expected": sum(len(READERS[h["topic"]]) for h in hostile),
            "hostile_dead_letters_by_reason": dict(reasons), "hostile_dead_letters_missing": len(missed),
            "hostile_dead_letters_missing_examples": missed[:10], "dead_letters_total": len(letters),
            "other_dead_letters": dict(others)}


def _request_figures(settings: Any, sent: list[str]) -> dict[str, Any]:
    from shelfq.contracts.errors import EventError
    from shelfq.contracts.events import Slate, decode

    reader = TopicReader(settings, "slates")
    wanted, answered, slates = set(sent), set(), 0
    for m in reader.drain():
        try:
            s = decode(m.value(), Slate)
        except EventError:
            continue
        if s.request_id in wanted:
            answered.add(s.request_id)
            slates += 1
    reader.close()
    return {"requests_sent": len(sent), "requests_answered": len(answered),
            "requests_unanswered": len(wanted - answered), "requests_answered_twice": slates - len(answered)}


def _model_figures(settings: Any, hostile: set[tuple[int, int]]) -> dict[str, Any]:
    from shelfq.contracts.errors import EventError
    from shelfq.learner.artifact import load_model

    reader = TopicReader(settings, "models", committed_only=True)
    versions, unloadable = [], 0
    for m in sorted(reader.drain(), key=lambda m: (m.partition(), m.offset())):
        if m.key() != b"dqn" or (m.partition(), m.offset()) in hostile:
            continue
        try:
            versions.append(load_model(m.value(), m.headers(), policy="dqn").headers.version)
        except EventError:
            unloadable += 1
    reader.close()
    return {"model_versions": len(versions), "model_version_last": versions[-1] if versions else 0,
            "model_versions_increasing": strictly_increasing(versions) and bool(versions),
            "model_versions_unloadable": unloadable}


def _history_figures(settings: Any, expected: dict[str, set]) -> dict[str, Any]:
    from shelfq.contracts.errors import EventError
    from shelfq.contracts.events import UserState, decode

    reader = TopicReader(settings, "user-state")
    newest: dict[str, list] = {}
    for m in reader.drain():
        try:
            state = decode(m.value(), UserState)
        except EventError:
            continue
        newest[state.user_id] = sorted((i.item_id, i.event, round(i.ts, 6)) for i in state.history)
    reader.close()
    differ = [u for u, h in expected.items() if newest.get(u) != sorted(h)]
    return {"user_histories_expected": len(expected), "user_histories_differing": len(differ),
            "user_histories_differing_examples": differ[:10]}


def _learner_checkpoint(chaos: Any, on_topic: int) -> dict[str, Any]:
    """The learner's last checkpoint covers every message of the transitions topic."""
    from pathlib import Path

    from shelfq.learner.checkpoint import load_checkpoint

    ck = load_checkpoint(Path(chaos.env["SHELFQ_LEARNER_CHECKPOINT_DIR"]))
    covered = sum(o for _t, _p, o in ck.state["offsets"]) if ck is not None else 0
    return {"learner_checkpoint_offsets": covered, "transitions_on_topic": on_topic}
