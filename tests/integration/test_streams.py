"""The streams worker against the real broker: events in, transitions out with the expected
rewards; kill -9 mid-stream loses nothing; two workers split the load."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from shelfq.contracts.events import DeadLetter, Transition, decode, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs
from shelfq.ops.topic_admin import delete_topics, ensure_topics
from shelfq.streams.synthetic import SyntheticTraffic, synthetic_traffic
from tests.integration.conftest import ShelfqProcess, read_topic

JOIN_ENV = {
    "SHELFQ_JOIN_WINDOW_S": "2",
    "SHELFQ_JOIN_ALLOWED_LATENESS_S": "0",
    "SHELFQ_JOIN_IDLE_ADVANCE_S": "2",
    "SHELFQ_STREAMS_TICK_S": "0.2",
}


class Worker(ShelfqProcess):
    """A `shelfq streams` worker."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        super().__init__(["streams", "--max-seconds", "300", "--log-level", "info"], settings, log, {**JOIN_ENV, **env})

    def wait_owning(self, at_least: int = 1, timeout: float = 60.0) -> None:
        self.wait(lambda: self.metric("shelfq_streams_partitions") >= at_least, f"owning {at_least} partitions", timeout)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def start(workers: list[Worker], settings: Settings, tmp_path: Path, **env: str) -> Worker:
    w = Worker(settings, tmp_path / f"worker-{len(workers)}.log", **env)
    workers.append(w)
    return w


def produce(settings: Settings, traffic: SyntheticTraffic, shift: float) -> None:
    """Send the traffic with its event times moved to now (so the wall clock agrees)."""
    import msgspec

    producer = ReliableProducer(settings)
    for topic, key, event in traffic.events:
        producer.produce(settings.topic(topic), encode(msgspec.structs.replace(event, ts=event.ts + shift)), key)
    producer.flush()


def collect(settings: Settings, topic: str, until, timeout: float = 60.0) -> list[bytes]:
    return read_topic(settings, topic, until, timeout)


def transitions_of(values: list[bytes]) -> dict[str, list[Transition]]:
    by_id: dict[str, list[Transition]] = defaultdict(list)
    for v in values:
        t = decode(v, Transition)
        by_id[t.transition_id].append(t)
    return by_id


def assert_same_except_emission_time(copies: list[Transition]) -> None:
    import msgspec

    first = msgspec.structs.replace(copies[0], ts_emitted=0.0)
    for c in copies[1:]:
        other = msgspec.structs.replace(c, ts_emitted=0.0)
        assert other == first, {f: (getattr(first, f), getattr(other, f)) for f in first.__struct_fields__
                                if getattr(first, f) != getattr(other, f)}


def expected_histories(traffic: SyntheticTraffic, shift: float) -> dict[str, list[tuple[str, str, float]]]:
    """Each user's interactions as user-state must hold them: every distinct feedback on an
    item once (the traffic's duplicates are exact copies), sorted."""
    from shelfq.contracts.events import Feedback

    seen: dict[str, set[tuple[str, str, float]]] = defaultdict(set)
    for _topic, _key, event in traffic.events:
        if isinstance(event, Feedback) and event.item_id is not None:
            seen[event.user_id].add((event.item_id, event.event, round(event.ts + shift, 6)))
    return {user: sorted(interactions) for user, interactions in seen.items()}


def read_histories(settings: Settings, expected: dict[str, list], timeout: float = 30.0) -> dict[str, list]:
    """The newest user-state of each user, as sorted (item, event, ts), once it matches
    ``expected`` or at the timeout."""
    from shelfq.contracts.events import UserState

    def newest(values: list[bytes]) -> dict[str, list]:
        states = {}
        for v in values:
            state = decode(v, UserState)
            states[state.user_id] = sorted((i.item_id, i.event, round(i.ts, 6)) for i in state.history)
        return states

    return newest(read_topic(settings, "user-state", lambda v: all(newest(v).get(u) == h for u, h in expected.items()),
                             timeout))


def test_events_in_transitions_out_with_expected_rewards(settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    worker = start(workers, settings, tmp_path)
    worker.wait_owning(settings.partitions)
    traffic = synthetic_traffic(users=20, requests_per_user=3, slate_size=4, seed=11, gap_s=0.2, tag="a")
    produce(settings, traffic, shift=time.time())
    # One orphan (no impression ever) and one malformed event, to see them in dlq.
    producer = ReliableProducer(settings)
    _topic, key, fb = next(e for e in traffic.events if e[0] == "feedback")
    import msgspec
    producer.produce(settings.topic("feedback"), encode(msgspec.structs.replace(fb, request_id="never-shown", ts=time.time())), key)
    producer.produce(settings.topic("impressions"), b'{"schema": "shelfq.impression.v1"}', key)
    producer.flush()

    values = collect(settings, "transitions", lambda v: len(transitions_of(v)) >= len(traffic.expected))
    got = transitions_of(values)
    assert {tid: (ts[0].reward, ts[0].done) for tid, ts in got.items()} == {
        tid: (e.reward, e.done) for tid, e in traffic.expected.items()}
    for copies in got.values():
        assert_same_except_emission_time(copies)

    letters = [decode(v, DeadLetter) for v in collect(settings, "dlq", lambda v: len(v) >= 2, timeout=20)]
    assert sorted(d.reason for d in letters) == ["invalid", "orphan"]
    assert all(d.component == "streams" for d in letters)
    orphan = next(d for d in letters if d.reason == "orphan")
    assert orphan.topic == settings.topic("feedback") and "never-shown" in orphan.detail
    assert worker.metric("shelfq_streams_emit_latency_seconds_count") >= len(traffic.expected)
    assert worker.metric("shelfq_streams_user_states_total") > 0


def test_a_sessions_exit_emits_its_earlier_requests_at_once_with_the_default_window(
        settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    """With the default 30-minute window only the exits can close these sessions within the
    test: every request of each session, not just the one the exit names, comes out now."""
    worker = start(workers, settings, tmp_path, SHELFQ_JOIN_WINDOW_S="1800")
    worker.wait_owning(settings.partitions)
    traffic = synthetic_traffic(users=6, requests_per_user=3, slate_size=3, seed=21, gap_s=0.2, exit_p=1.0, tag="exit")
    produce(settings, traffic, shift=time.time())
    values = collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(traffic.expected), timeout=60)
    got = transitions_of(values)
    assert set(got) == set(traffic.expected)
    assert {tid: (ts[0].reward, ts[0].done) for tid, ts in got.items()} == {
        tid: (e.reward, e.done) for tid, e in traffic.expected.items()}
    assert any(e.done for e in traffic.expected.values()) and not any(
        got[tid][0].done for tid in got if not tid.split(":")[0].endswith("-2")), "done only on each session's last"


def test_kill_9_mid_stream_loses_no_transition(settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    first = start(workers, settings, tmp_path)
    first.wait_owning(settings.partitions)
    early = synthetic_traffic(users=30, requests_per_user=3, slate_size=4, seed=5, gap_s=0.2, tag="early")
    late = synthetic_traffic(users=30, requests_per_user=3, slate_size=4, seed=6, gap_s=0.2, tag="late")
    early_shift = time.time()
    produce(settings, early, shift=early_shift)
    # Kill as soon as transitions start to flow: some windows are closed, some open, some acked.
    collect(settings, "transitions", lambda v: len(v) >= 10, timeout=60)
    first.kill9()
    late_shift = time.time()
    produce(settings, late, shift=late_shift)

    second = start(workers, settings, tmp_path)
    second.wait_owning(settings.partitions)
    expected = {**early.expected, **late.expected}
    values = collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(expected), timeout=90)
    got = transitions_of(values)
    assert set(got) == set(expected), (f"missing: {sorted(set(expected) - set(got))[:10]}; "
                                       f"the restarted worker's log ends: {second.log.read_text()[-4000:]}")
    for tid, copies in got.items():
        assert (copies[0].reward, copies[0].done) == (expected[tid].reward, expected[tid].done), tid
        assert_same_except_emission_time(copies)
    # Every user's history holds each interaction once, none lost or counted twice by the kill.
    histories = {**expected_histories(early, early_shift), **expected_histories(late, late_shift)}
    stored = read_histories(settings, histories)
    assert {u: stored.get(u) for u in histories} == histories
    assert not any(h for u, h in stored.items() if u not in histories), "only users with interactions have any"


def test_inputs_written_in_transactions_leave_holes_the_worker_passes(settings: Settings, workers: list[Worker],
                                                                     tmp_path: Path) -> None:
    """Transaction markers take offsets no consumer sees: to the worker's delivery-order guard
    they look like messages Faust left out. It must read them from the broker, find nothing
    there, go on, let Faust commit past the holes (streams/sequence.py), and not take a marker
    at a partition's end for unread input that holds its watermark back."""
    import msgspec
    from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    worker = start(workers, settings, tmp_path)
    worker.wait_owning(settings.partitions)
    traffic = synthetic_traffic(users=10, requests_per_user=2, slate_size=3, seed=17, gap_s=0.2, tag="txn")
    producer = Producer(settings.confluent_config(**{"transactional.id": f"txn-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(30)
    shift = time.time()
    for start_at in range(0, len(traffic.events), 10):  # a marker in every partition each chunk wrote to
        producer.begin_transaction()
        for topic, key, event in traffic.events[start_at:start_at + 10]:
            producer.produce(settings.topic(topic), encode(msgspec.structs.replace(event, ts=event.ts + shift)), key)
        producer.commit_transaction(30)

    values = collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(traffic.expected), timeout=90)
    assert set(transitions_of(values)) == set(traffic.expected)
    assert worker.metric("shelfq_streams_out_of_order_total", 'verdict="hole"') > 0

    admin = AdminClient(settings.confluent_config())
    inputs = [TopicPartition(settings.topic(t), p) for t in ("slates", "impressions", "feedback")
              for p in range(settings.partitions)]
    # Each partition ends with its last transaction's marker, which no consumer reads past.
    ends = {(tp.topic, tp.partition): f.result().offset - 1
            for tp, f in admin.list_offsets({tp: OffsetSpec.latest() for tp in inputs}).items()}
    group = f"{settings.topic_prefix}streams"
    deadline = time.monotonic() + 30
    while True:  # Faust commits every second; past every hole, the group reaches the last marker
        committed = {(tp.topic, tp.partition): tp.offset for tp in admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)])[group].result().topic_partitions}
        if all(committed.get(key, -1) == end for key, end in ends.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {k: committed.get(k) for k in ends} == ends


def test_records_of_an_aborted_transaction_produce_no_transitions(settings: Settings, workers: list[Worker],
                                                                  tmp_path: Path) -> None:
    """A producer of our inputs that aborts a transaction leaves its records in the log; only
    a read_committed consumer skips them. Faust's consumer and the worker's own readers of
    holes and tails must all skip them: an aborted transaction, a committed one, and an
    aborted one at the end of every partition it wrote to; only the committed one's
    transitions come out, its windows close though the log ends in aborted records."""
    import msgspec
    from confluent_kafka import Producer

    worker = start(workers, settings, tmp_path)
    worker.wait_owning(settings.partitions)
    aborted = synthetic_traffic(users=8, requests_per_user=2, slate_size=3, seed=41, gap_s=0.2, tag="aborted")
    committed = synthetic_traffic(users=8, requests_per_user=2, slate_size=3, seed=42, gap_s=0.2, tag="kept")
    tail = synthetic_traffic(users=8, requests_per_user=2, slate_size=3, seed=43, gap_s=0.2, tag="tail")
    producer = Producer(settings.confluent_config(**{"transactional.id": f"txn-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(30)
    shift = time.time()
    for traffic, commit in ((aborted, False), (committed, True), (tail, False)):
        producer.begin_transaction()
        for topic, key, event in traffic.events:
            producer.produce(settings.topic(topic), encode(msgspec.structs.replace(event, ts=event.ts + shift)), key)
        producer.flush(30)  # on the broker, then aborted: what a read_uncommitted consumer reads
        producer.commit_transaction(30) if commit else producer.abort_transaction(30)

    collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(committed.expected), timeout=90)
    time.sleep(6)  # a few windows: what was read of the aborted ones would be out by now
    got = transitions_of(collect(settings, "transitions", lambda v: False, timeout=5))
    assert set(got) == set(committed.expected), sorted(set(got) - set(committed.expected))[:10]
    assert worker.metric("shelfq_streams_input_events_total") == len(committed.events)


def oversized_session(request: str, user: str, ts: float, context_chars: int) -> list[tuple[str, object]]:
    """A one-item slate whose state carries 64 context entries of ``context_chars`` characters
    (a transition carries the context twice), its impression and its exit: it closes at once."""
    from shelfq.contracts.events import Feedback, Impression, Slate, State

    sid = f"s-{request}"
    state = State(context={f"k{i}": "x" * context_chars for i in range(64)})
    return [("slates", Slate(request_id=request, user_id=user, session_id=sid, ts=ts, items=["big"], scores=[1.0],
                             propensities=[1.0], policy="random", state=state)),
            ("impressions", Impression(request_id=request, user_id=user, session_id=sid, ts=ts + 0.01, items=["big"])),
            ("feedback", Feedback(request_id=request, user_id=user, session_id=sid, ts=ts + 0.1, event="exit"))]


def test_transitions_too_large_to_send_are_dead_lettered_once_and_the_rest_flow(settings: Settings, workers: list[Worker],
                                                                                tmp_path: Path) -> None:
    """One transition is over the worker's SHELFQ_STREAMS_MAX_MESSAGE_BYTES (refused by its
    producer before any send), one over the transitions topic's max.message.bytes (the broker
    refuses its whole batch; sent again alone, refused alone). Both become dead letters, their
    batch-mates and everything else arrive, the worker keeps running, and a restarted worker
    does not send them again."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient(settings.confluent_config())
    limit = ConfigEntry("max.message.bytes", "20000", incremental_operation=AlterConfigOpType.SET)
    for f in admin.incremental_alter_configs([ConfigResource("TOPIC", settings.topic("transitions"),
                                                             incremental_configs=[limit])]).values():
        f.result(30)
    env = {"SHELFQ_STREAMS_MAX_MESSAGE_BYTES": "30000"}
    first = start(workers, settings, tmp_path, **env)
    first.wait_owning(settings.partitions)
    traffic = synthetic_traffic(users=12, requests_per_user=2, slate_size=3, seed=31, gap_s=0.2, tag="size")
    now = time.time()
    produce(settings, traffic, shift=now)
    producer = ReliableProducer(settings)
    # ~27 KB: over the topic's 20,000 bytes, under the worker's 30,000; ~34 KB: over both.
    for request, chars in (("refused", 200), ("over", 250)):
        for topic, event in oversized_session(request, f"u-{request}", now + 0.5, chars):
            producer.produce(settings.topic(topic), encode(event), event.user_id)  # type: ignore[attr-defined]
    producer.flush()
    oversized = {"refused:0", "over:0"}

    def too_large(values: list[bytes]) -> list[DeadLetter]:
        return [d for d in (decode(v, DeadLetter) for v in values) if d.reason == "too_large"]

    letters = too_large(collect(settings, "dlq", lambda v: len(too_large(v)) >= 2, timeout=60))
    assert sorted(next(t for t in oversized if t in d.detail) for d in letters) == sorted(oversized), letters
    assert all(d.topic == settings.topic("transitions") for d in letters)
    assert "sent alone" in next(d for d in letters if "refused:0" in d.detail).detail
    got = transitions_of(collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(traffic.expected)))
    assert set(got) == set(traffic.expected), "every other transition arrives, the refused one's batch-mates too"
    assert first.proc.poll() is None and first.metric("shelfq_dead_letters_total", 'reason="too_large"') == 2
    time.sleep(3)  # the settled records are written and the offsets committed (every second)
    first.stop()

    second = start(workers, settings, tmp_path, **env)
    second.wait_owning(settings.partitions)
    after = synthetic_traffic(users=6, requests_per_user=2, slate_size=3, seed=32, gap_s=0.2, tag="after")
    produce(settings, after, shift=time.time())
    expected = {**traffic.expected, **after.expected}
    got = transitions_of(collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(expected)))
    assert set(got) == set(expected)
    time.sleep(3)  # a record restored unsettled would be due at once: its exit has passed
    assert len(too_large(collect(settings, "dlq", lambda v: False, timeout=5))) == 2, "not emitted again"
    assert second.metric("shelfq_dead_letters_total", 'reason="too_large"') == 0


def test_two_workers_split_the_load(settings: Settings, workers: list[Worker], tmp_path: Path) -> None:
    a = start(workers, settings, tmp_path)
    b = start(workers, settings, tmp_path)
    deadline = time.monotonic() + 90
    while not (a.metric("shelfq_streams_partitions") >= 1 and b.metric("shelfq_streams_partitions") >= 1
               and a.metric("shelfq_streams_partitions") + b.metric("shelfq_streams_partitions") == settings.partitions):
        assert time.monotonic() < deadline, "the two workers did not share the partitions"
        time.sleep(0.5)
    traffic = synthetic_traffic(users=60, requests_per_user=2, slate_size=4, seed=9, gap_s=0.2, tag="two")
    produce(settings, traffic, shift=time.time())
    values = collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(traffic.expected), timeout=90)
    assert set(transitions_of(values)) == set(traffic.expected)
    assert a.metric("shelfq_streams_transitions_total") > 0 and b.metric("shelfq_streams_transitions_total") > 0


def test_records_a_worker_keeps_through_two_rebalances_are_all_emitted(settings: Settings, workers: list[Worker],
                                                                       tmp_path: Path) -> None:
    """Rebalances are eager: a worker gives up every partition, then gets some back, and drops
    the records of all of them. Faust's recovery reads a partition it keeps on from where its
    last recovery stopped, so records it restored then (here: those of the partitions it keeps
    after a second worker came, restored when that one joined) were lost when the second left
    (issue 14). The records stay open through both rebalances (a long window, no feedback
    yet), then the feedback, exits included, closes every one of them."""
    first = start(workers, settings, tmp_path, SHELFQ_JOIN_WINDOW_S="1800")
    first.wait_owning(settings.partitions)
    traffic = synthetic_traffic(users=24, requests_per_user=2, slate_size=3, seed=27, gap_s=0.2, exit_p=1.0,
                                tag="kept")
    shift = time.time()
    shown = SyntheticTraffic([e for e in traffic.events if e[0] != "feedback"], traffic.expected)
    produce(settings, shown, shift)
    requests = len({event.request_id for _topic, _key, event in shown.events})  # type: ignore[union-attr]
    first.wait(lambda: first.metric("shelfq_streams_join_records") >= requests, "the first worker to hold every record")
    time.sleep(2)  # its flushes, records on the changelog included

    second = start(workers, settings, tmp_path, SHELFQ_JOIN_WINDOW_S="1800")
    deadline = time.monotonic() + 90
    while not (first.metric("shelfq_streams_partitions") >= 1 and second.metric("shelfq_streams_partitions") >= 1
               and first.metric("shelfq_streams_partitions") + second.metric("shelfq_streams_partitions")
               == settings.partitions):
        assert time.monotonic() < deadline, "the two workers did not share the partitions"
        time.sleep(0.5)
    assert second.stop() == 0
    first.wait_owning(settings.partitions)
    time.sleep(2)  # its recovery done, the join rebuilt

    feedback = SyntheticTraffic([e for e in traffic.events if e[0] == "feedback"], traffic.expected)
    produce(settings, feedback, shift)
    values = collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(traffic.expected), timeout=60)
    got = transitions_of(values)
    assert set(got) == set(traffic.expected), (f"missing {len(set(traffic.expected) - set(got))}: "
                                               f"{sorted(set(traffic.expected) - set(got))[:10]}")
    assert {tid: (ts[0].reward, ts[0].done) for tid, ts in got.items()} == {
        tid: (e.reward, e.done) for tid, e in traffic.expected.items()}
    for copies in got.values():
        assert_same_except_emission_time(copies)


def test_a_worker_started_before_its_topics_exist_reads_them_once_they_do(workers: list[Worker], tmp_path: Path) -> None:
    """A worker that joins its group while its source topics are missing (a fresh deployment,
    or a loaded broker slow to show new topics) assigns itself none of them; it must take
    them up when they appear, not at the next 5-minute metadata refresh."""
    settings = Settings.from_env(topic_prefix=f"test-{uuid.uuid4().hex[:8]}.", partitions=3)
    try:
        worker = start(workers, settings, tmp_path)
        worker.wait(lambda: "Ignoring missing topic" in worker.log.read_text(), "the worker to join without its topics")
        ensure_topics(settings)
        traffic = synthetic_traffic(users=5, requests_per_user=2, slate_size=3, seed=13, gap_s=0.2, tag="late")
        produce(settings, traffic, shift=time.time())
        values = collect(settings, "transitions", lambda v: len(transitions_of(v)) >= len(traffic.expected), timeout=60)
        assert set(transitions_of(values)) == set(traffic.expected)
    finally:
        for w in workers:
            w.stop()
        delete_topics(settings, [spec.name for spec in topic_specs(settings).values()])


def test_a_worker_running_past_the_stall_timeout_logs_no_error(settings: Settings, workers: list[Worker],
                                                               tmp_path: Path) -> None:
    """Faust's stall detector (every 2.5 commit intervals) logs an ERROR for every assigned
    partition with unread messages that no stream reads once the stall timeout has passed. The
    user-state table's changelog partitions are assigned to the worker and grow with every
    history it writes, but only recovery reads them: they must not count as stalled."""
    timeout_s = 6.0
    worker = start(workers, settings, tmp_path, SHELFQ_STREAMS_STALL_TIMEOUT_S=str(timeout_s))
    worker.wait_owning(settings.partitions)
    traffic = synthetic_traffic(users=20, requests_per_user=2, slate_size=4, seed=23, gap_s=0.2, click_p=0.5,
                                tag="quiet")
    produce(settings, traffic, shift=time.time())
    values = collect(settings, "transitions", lambda v: set(transitions_of(v)) >= set(traffic.expected), timeout=60)
    assert set(transitions_of(values)) == set(traffic.expected)
    # user-state has grown past where the worker's recovery left it: a changelog partition
    # with "unread" messages.
    assert worker.metric("shelfq_streams_user_states_total") > 0
    time.sleep(4 * timeout_s)  # well past the timeout, through several of the detector's rounds
    assert worker.proc.poll() is None
    text = worker.log.read_text()
    assert "has not started processing" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert not errors, "\n".join(errors[:20])
