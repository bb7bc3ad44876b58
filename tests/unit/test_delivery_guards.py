"""The streams worker's delivery guards (stalls, messages out of offset order, offset reads
racing a rebalance): what they ask of Faust's consumer, and what they forget.

Faust's consumer is replaced by a recorder: what is tested is the worker's decision and the
calls it makes, not Kafka's behaviour (tests/integration/test_streams.py runs real workers)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from faust.types import TP

from shelfq.contracts.events import DeadLetter, decode, encode
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.settings import Settings
from shelfq.streams import faust_internals
from shelfq.streams.app import create_app
from shelfq.streams.backlog import STALL_AFTER_S
from shelfq.streams.broker_offsets import BrokerOffsets
from shelfq.streams.config import StreamsConfig
from shelfq.streams.join import INPUTS
from shelfq.streams.outage import WatermarkHold
from shelfq.streams.sequence import HoleUnreadable
from tests.unit.test_streams_outputs import RecordingProducer, flush


class RecordingConsumer:
    def __init__(self, fail_seek: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_seek = fail_seek
        self._paused_partitions: set = set()
        self._buffered_partitions: set = set()
        self._committed_offset: dict = {}  # Faust's own copy of the committed offsets: empty, as after a restart

    def resume_partitions(self, tps: list) -> None:
        self.calls.append(("resume", tuple(tps)))

    async def seek_wait(self, offsets: dict) -> None:
        if self.fail_seek:
            raise RuntimeError("partition not assigned")
        self.calls.append(("seek", dict(offsets)))

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.calls.append(("gap", tp, offset_from, offset_to))


def sample(worker, name: str, **labels: str) -> float | None:
    """A series' value as /metrics shows it."""
    return worker.metrics.registry.get_sample_value(name, labels)


def worker_with(consumer: RecordingConsumer):
    app, worker = create_app(Settings.from_env(topic_prefix="stalls."), StreamsConfig())
    app.consumer = consumer
    app.producer = RecordingProducer()
    return worker


def dead_lettered_offsets(worker) -> list[int | None]:
    """Flush the worker; the offsets of the dead letters the broker took, in the order sent."""
    producer = worker.app.producer
    asyncio.run(flush(worker, producer))
    return [decode(v, DeadLetter).offset for t, _k, v in producer.delivered if t == "stalls.dlq"]


def test_a_stalled_partition_is_resumed_then_sought_back_to_its_first_unprocessed_offset() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    tp = TP("stalls.impressions", 2)

    async def checks() -> None:
        for now in (0.0, STALL_AFTER_S, 2 * STALL_AFTER_S):
            await worker.stalls.check(tp, 7, now)

    asyncio.run(checks())
    assert consumer.calls == [("resume", (tp,)), ("seek", {tp: 7})]
    assert sample(worker, "shelfq_streams_fetch_stalls_total", action="seek") == 1


def test_a_failed_seek_is_logged_and_the_worker_goes_on(caplog) -> None:
    consumer = RecordingConsumer(fail_seek=True)
    worker = worker_with(consumer)
    tp = TP("stalls.feedback", 0)

    async def checks() -> None:
        for now in (0.0, STALL_AFTER_S, 2 * STALL_AFTER_S, 3 * STALL_AFTER_S):
            await worker.stalls.check(tp, 3, now)

    asyncio.run(checks())
    assert "could not seek stalls.feedback:0 to 3" in caplog.text
    assert consumer.calls == [("resume", (tp,))], "the seeks failed; the guard tried again a tick later"
    assert sample(worker, "shelfq_streams_fetch_stalls_total", action="seek") == 2


def test_a_revoked_partition_forgets_its_read_position() -> None:
    worker = worker_with(RecordingConsumer())
    worker.assign({0, 1})
    kept, revoked = TP("stalls.slates", 0), TP("stalls.slates", 1)
    order, stalls = worker.holes.order, worker.stalls.watch
    order.check(kept, 4, start=4)
    order.check(revoked, 8, start=8)
    stalls.check(revoked, 9, 0.0)
    worker.on_revoked({1})
    assert order.next_offset(kept) == 5 and order.next_offset(revoked) is None
    assert stalls.stalled_s(revoked, 100.0) == 0.0
    assert worker.partitions == {0}


def test_the_records_of_a_partition_revoked_and_assigned_straight_back_are_kept() -> None:
    """Kafka's rebalances are eager: every partition is revoked, kept ones too, before the new
    assignment. Faust's recovery restores a partition it keeps only from where its last
    recovery of it stopped, so the records it restored before must still be in the table:
    dropped at the revoke, they were never emitted (issue 14). Those of a partition the new
    assignment leaves out go once its recovery is complete."""
    import msgspec

    worker = worker_with(RecordingConsumer())
    worker.assign({0, 1})
    slate, impression = (EXAMPLES[t][1] for t in ("slates", "impressions"))
    other = {t: msgspec.structs.replace(e, request_id="moved") for t, e in (("slates", slate), ("impressions", impression))}
    for partition, events in ((0, {"slates": slate, "impressions": impression}), (1, other)):
        for topic, event in events.items():
            worker.join.process(partition, topic, event, now=slate.ts)
    worker.on_revoked({0, 1})  # eager: partition 0 comes straight back
    assert worker.partitions == set()
    worker.on_tick(slate.ts + 7200)
    asyncio.run(flush(worker, worker.app.producer))
    assert worker.app.producer.delivered == [], "nothing acts for them meanwhile"

    worker.assign({0, 2})  # the new assignment's recovery is complete
    assert set(worker.join.records) == {slate.request_id}, "partition 0's record kept, partition 1's dropped"
    worker.join.note_backlog(0, set())  # the assignment's first backlog read: nothing unread
    out = worker.join.tick(0, slate.ts + 7200)  # its window long closed
    assert [t.transition_id for t in out.transitions] == [f"{slate.request_id}:{p}" for p in range(len(impression.items))]


def test_until_the_first_backlog_read_after_an_assignment_every_input_holds_the_watermark() -> None:
    """Issue 14, chaos run 17: a restarted worker read a partition's slates and feedback ahead of
    its impressions; the first backlog read had not reached the join yet (the event loop was
    busy filling holes), so the join took the unread impressions for idle once idle_advance_s
    had passed since the assignment, and the click waiting for its impression became an orphan.
    Until the broker has said what is unread, every input counts as unread."""
    import msgspec

    from shelfq.streams.join import JoinConfig, Record

    app, worker = create_app(Settings.from_env(topic_prefix="restart."),
                             StreamsConfig(join=JoinConfig(window_s=2, allowed_lateness_s=0, idle_advance_s=0.05)))
    app.consumer, app.producer = RecordingConsumer(), RecordingProducer()
    slate, impression = EXAMPLES["slates"][1], EXAMPLES["impressions"][1]
    click = msgspec.structs.replace(EXAMPLES["feedback"][1], event="click", value=None, ts=impression.ts + 0.01)
    # Restored from the changelog: the slate and the click met, the impression is still unread.
    worker.join.records[slate.request_id] = Record(request_id=slate.request_id, partition=1, slate=slate,
                                                   feedback=[click])
    worker.assign({1})
    worker.ownership.start_offsets = {TP(f"restart.{t}", 1): 10 for t in INPUTS}
    time.sleep(0.1)  # idle_advance_s passes; no backlog read has come in since the assignment
    later = msgspec.structs.replace(slate, request_id="read-ahead", ts=slate.ts + 10)
    later_click = msgspec.structs.replace(click, request_id="read-ahead", ts=later.ts + 0.01)
    deliver(worker, message(TP("restart.slates", 1), 10, encode(later)),
            message(TP("restart.feedback", 1), 10, encode(later_click)))
    assert worker.join.outcomes[("feedback", "orphan")] == 0, "the click waits for its impression"
    assert worker.join.watermark(1) is None
    deliver(worker, message(TP("restart.impressions", 1), 10, encode(impression)))
    worker.backlog.end_offsets = lambda partitions: {}  # the first backlog read: nothing unread now
    asyncio.run(worker.refresh_backlog())
    out = worker.join.tick(1, time.time() + 60)  # every input idle: its window closes on the clock
    assert [t.reward_parts for t in out.transitions if t.request_id == slate.request_id
            and t.action == click.item_id] == [{"click": 1}]


def message(tp: TP, offset: int, value: bytes = b"not json") -> SimpleNamespace:
    return SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset, value=value, key=b"u",
                           time_in=None)


class BrokerMessage:
    """What confluent-kafka's consumer returns, for the reader standing in for the broker."""

    def __init__(self, tp: TP, offset: int) -> None:
        self._tp, self._offset = tp, offset

    def topic(self) -> str:
        return self._tp.topic

    def partition(self) -> int:
        return self._tp.partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"u"

    def value(self) -> bytes:
        return b"not json"


class RecordingReader:
    def __init__(self, holds: set[int], fail: bool = False) -> None:
        self.holds, self.reads, self.fail = holds, [], fail

    def read(self, topic: str, partition: int, begin: int, end: int) -> list:
        self.reads.append((topic, partition, begin, end))
        if self.fail:
            raise HoleUnreadable("broker gone")
        return [BrokerMessage(TP(topic, partition), o) for o in range(begin, end) if o in self.holds]


def deliver(worker, *messages: SimpleNamespace) -> None:
    worker.on_batch([SimpleNamespace(message=m) for m in messages])


def test_offsets_faust_left_out_are_read_from_the_broker_and_processed_first() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.assign({0})
    tp = TP("stalls.impressions", 0)
    worker.ownership.start_offsets = {tp: 10}  # the group's committed offset
    worker.holes.reader = reader = RecordingReader(holds={10, 12, 13})  # 11: a transaction marker, say

    deliver(worker, message(tp, 14), message(tp, 15), message(tp, 13), message(tp, 16))
    assert reader.reads == [("stalls.impressions", 0, 10, 14)]
    assert dead_lettered_offsets(worker) == [10, 12, 13, 14, 15, 16], "in offset order, and the repeat of 13 skipped"
    assert sample(worker, "shelfq_streams_out_of_order_total", verdict="hole") == 1
    assert sample(worker, "shelfq_streams_out_of_order_total", verdict="repeat") == 1
    # Only once what they caused went to the producer is Faust told the hole is done.
    assert consumer.calls == []
    asyncio.run(worker.after_flush())
    assert consumer.calls == [("gap", tp, 10, 13)]


def test_nothing_is_processed_before_the_start_offsets_are_known_so_a_late_first_delivery_is_a_hole() -> None:
    """Issue 14: a restarted worker's first delivery began past the committed offset before
    the broker's answer was in, and the worker took that first offset for the start: every
    message before it was lost (282 transitions of a short chaos run, with lag 0)."""
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.assign({1})
    tp = TP("stalls.impressions", 1)
    asked: list[str] = []

    def committed() -> dict:
        asked.append("committed")
        if len(asked) == 1:
            raise RuntimeError("coordinator load in progress")  # the broker not answering yet
        return {tp: 94}

    worker.ownership.committed_offsets = committed
    worker.holes.reader = reader = RecordingReader(holds={94, 96, 137})
    producer = worker.app.producer

    async def handle() -> None:  # the worker's path for a batch of Faust's, the broker answering
        task = asyncio.ensure_future(worker.handle_batch([SimpleNamespace(message=message(tp, 138))]))
        while not task.done():
            await asyncio.sleep(0.01)
            await producer.flush()
        await task

    asyncio.run(asyncio.wait_for(handle(), 10))
    assert asked == ["committed", "committed"], "asked again until the broker answered"
    assert reader.reads == [("stalls.impressions", 1, 94, 138)]
    assert [decode(v, DeadLetter).offset for t, _k, v in producer.delivered if t == "stalls.dlq"] == [94, 96, 137, 138]
    assert consumer.calls == [("gap", tp, 94, 137)]


def test_in_order_offsets_read_nothing_from_the_broker() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.holes.reader = reader = RecordingReader(holds=set())
    tp = TP("stalls.slates", 1)
    worker.ownership.start_offsets = {}  # never committed: Faust starts at the beginning
    deliver(worker, message(tp, 0), message(tp, 1), message(tp, 2))
    asyncio.run(worker.after_flush())
    assert reader.reads == [] and consumer.calls == []
    assert worker.holes.order.next_offset(tp) == 3


def test_a_hole_of_markers_only_is_passed_without_telling_faust() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.assign({0})
    tp = TP("stalls.feedback", 0)
    worker.ownership.start_offsets = {tp: 4}
    worker.holes.reader = RecordingReader(holds=set())
    deliver(worker, message(tp, 4), message(tp, 6))  # 5: a transaction's marker
    asyncio.run(worker.after_flush())
    assert consumer.calls == [] and worker.holes.order.next_offset(tp) == 7


def test_a_hole_the_broker_cannot_give_stops_the_batch_and_withholds_its_acks() -> None:
    worker = worker_with(RecordingConsumer())
    worker.assign({0})
    tp = TP("stalls.impressions", 0)
    worker.ownership.start_offsets = {tp: 10}
    worker.holes.reader = RecordingReader(holds=set(), fail=True)
    before, at_hole, after = message(tp, 10), message(tp, 12), message(tp, 13)
    with pytest.raises(HoleUnreadable):
        deliver(worker, before, at_hole, after)
    assert before.acked and at_hole.acked and after.acked, "all unflushed: Faust must record no ack"
    assert dead_lettered_offsets(worker) == [10], "nothing after the hole was processed"


def test_a_hole_filled_on_a_partition_revoked_before_the_flush_is_not_reported() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.assign({0, 1})
    tp = TP("stalls.slates", 1)
    worker.ownership.start_offsets = {tp: 0}
    worker.holes.reader = RecordingReader(holds={0})
    deliver(worker, message(tp, 1))
    worker.on_revoked({1})
    asyncio.run(worker.after_flush())
    assert consumer.calls == []


def test_an_offset_read_that_a_rebalance_overtakes_is_dropped_not_a_crash() -> None:
    worker = worker_with(RecordingConsumer())
    worker.assign({0})
    noted: dict[int, set[str]] = {}
    worker.backlog.note_backlog = lambda partition, topics: noted.__setitem__(partition, topics)

    def committed() -> dict:
        worker.assign({0, 1})  # the assignment changes while the broker answers
        return {}

    worker.ownership.committed_offsets = committed
    worker.backlog.end_offsets = lambda partitions: {TP("stalls.slates", 0): 5}
    asyncio.run(worker.refresh_backlog())
    assert worker.ownership.start_offsets is None, "offsets read for the old assignment must not be kept"
    assert noted == {}
    worker.ownership.committed_offsets = lambda: {TP("stalls.slates", 0): 2}
    asyncio.run(worker.refresh_backlog())
    assert noted == {0: {"slates"}, 1: set()}
    assert sample(worker, "shelfq_consumer_lag", topic="stalls.slates", partition="0") == 3


def test_the_start_offsets_are_read_after_the_assignment_and_dropped_if_it_changed_meanwhile() -> None:
    worker = worker_with(RecordingConsumer())
    ownership = worker.ownership
    tp = TP("stalls.slates", 0)
    ownership.committed_offsets = lambda: {tp: 7}

    async def recover() -> None:
        worker.on_recovered({0})
        await asyncio.sleep(0.1)  # the read runs in the background

    asyncio.run(recover())
    assert ownership.start_offset(tp) == 7

    def overtaken() -> dict:
        worker.assign({0, 1})
        return {tp: 8}

    async def overtake() -> None:
        worker.assign({0})
        ownership.committed_offsets = overtaken
        await ownership.learn_start_offsets()

    asyncio.run(overtake())
    assert ownership.start_offsets is None


def test_the_user_state_changelog_is_declared_without_acks_and_the_stall_timeout_reaches_faust() -> None:
    """Faust's stall detector reports assigned partitions of acked topics that grow unread:
    the user-state changelog, read only by recovery, must not be one of them."""
    app, worker = create_app(Settings.from_env(topic_prefix="stalls."), StreamsConfig(stall_timeout_s=7))
    assert worker.histories.changelog_topic.get_topic_name() == "stalls.user-state"
    assert worker.histories.changelog_topic.acks is False
    assert worker.records.changelog_topic.acks is False  # as Faust declares its own
    assert app.conf.stream_processing_timeout == 7 and app.conf.broker_commit_livelock_soft_timeout == 7


@pytest.mark.parametrize("name, value", [("SHELFQ_STREAMS_STALL_TIMEOUT_S", "0"), ("SHELFQ_STREAMS_BATCH_WAIT_S", "0"),
                                         ("SHELFQ_STREAMS_FETCH_WAIT_S", "-1"), ("SHELFQ_STREAMS_FETCH_MIN_BYTES", "0"),
                                         ("SHELFQ_STREAMS_MAX_MESSAGE_BYTES", "1000")])
def test_impossible_fetch_and_stall_settings_are_config_errors(name: str, value: str) -> None:
    from shelfq.contracts.errors import ConfigError

    with pytest.raises(ConfigError, match=name.removeprefix("SHELFQ_STREAMS_").lower()):
        StreamsConfig.from_env({name: value})


def test_faust_and_the_hole_readers_read_committed_records_only() -> None:
    """Records of an aborted transaction must reach the join by no path: Faust's consumer
    (read_uncommitted unless exactly_once, with no setting) and the worker's readers of holes
    and tails agree on read_committed, and unread input ends at the last stable offset."""
    import confluent_kafka

    async def consumer_isolation() -> str:
        app, _worker = create_app(Settings.from_env(topic_prefix="stalls."), StreamsConfig())
        client = faust_internals.new_aiokafka_consumer(app)
        try:
            return faust_internals.isolation_level(client)
        finally:
            await client.stop()

    assert asyncio.run(consumer_isolation()) == "read_committed"
    worker = worker_with(RecordingConsumer())
    assert worker.holes.reader.config["isolation.level"] == worker.backlog.probe.config["isolation.level"] == "read_committed"

    asked: list = []

    class Admin:
        def list_offsets(self, request: dict, **kw) -> dict:
            asked.append(kw.get("isolation_level"))
            return {}

    broker = BrokerOffsets(Settings.from_env(topic_prefix="stalls."), "stalls.streams", worker.logical, admin=Admin())
    broker.end_offsets({0})
    assert asked == [confluent_kafka.IsolationLevel.READ_COMMITTED]


def test_watermarks_stay_held_for_the_grace_after_an_outage_then_follow_the_backlog() -> None:
    # A frontend's producer that kept events through an outage reconnects after the worker:
    # until outage_grace_s has passed, every input counts as unread whatever the backlog says.
    noted: dict[int, set[str]] = {}
    clock = [100.0]
    hold = WatermarkHold(lambda partition, topics: noted.__setitem__(partition, topics), INPUTS, grace_s=30.0,
                         clock=lambda: clock[0])
    everything = set(INPUTS)
    hold.hold({0, 1})  # the broker was away
    assert noted == {0: everything, 1: everything}
    noted.clear()  # back: the backlog read sees nothing unread yet
    clock[0] += 29.0
    hold.keep_holding({0, 1})
    assert noted == {0: everything, 1: everything}
    noted.clear()
    clock[0] += 1.0  # the grace is over
    hold.keep_holding({0, 1})
    assert noted == {}


def test_the_worker_keeps_a_watermark_still_through_the_grace_then_the_clock_moves_it() -> None:
    """The tick's order: the backlog read (nothing unread), then the hold, then the clock."""
    app, worker = create_app(Settings.from_env(topic_prefix="grace."), StreamsConfig(outage_grace_s=30.0))
    app.producer = RecordingProducer()
    worker.assign({0})
    clock = [0.0]
    worker.hold.clock = lambda: clock[0]
    worker.ownership.start_offsets = {}
    worker.backlog.end_offsets = lambda partitions: {}  # the broker is back, and nothing is unread
    deliver(worker, message(TP("grace.slates", 0), 0, encode(EXAMPLES["slates"][1])))
    now = time.time()

    def tick(later: float) -> None:
        asyncio.run(worker.refresh_backlog())
        worker.keep_holding()
        worker.on_tick(now + later)

    worker.hold_watermarks()  # the broker was away
    tick(100.0)
    assert worker.join.watermark(0) is None, "held: every input counts as unread"
    clock[0] = 30.0  # the grace is over
    tick(200.0)
    assert worker.join.watermark(0) is not None, "every input idle: the wall clock moves it"
