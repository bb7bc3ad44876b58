"""The streams worker's delivery guards (stalls, messages out of offset order, offset reads
racing a rebalance): what they ask of Faust's consumer, and what they forget.

Faust's consumer is replaced by a recorder: what is tested is the worker's decision and the
calls it makes, not Kafka's behaviour (tests/integration/test_streams.py runs real workers)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from shelfq.contracts.settings import Settings
from shelfq.streams import faust_internals
from shelfq.streams.app import STALL_AFTER_S, create_app
from shelfq.streams.config import StreamsConfig
from shelfq.streams.sequence import HoleUnreadable


class RecordingConsumer:
    def __init__(self, fail_seek: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_seek = fail_seek
        self._paused_partitions: set = set()
        self._buffered_partitions: set = set()

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
    return worker


def test_a_stalled_partition_is_resumed_then_sought_back_to_its_first_unprocessed_offset() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    tp = TP("stalls.impressions", 2)

    async def checks() -> None:
        for now in (0.0, STALL_AFTER_S, 2 * STALL_AFTER_S):
            await worker._unstall(tp, 7, worker._stalls.check(tp, 7, now), now)

    asyncio.run(checks())
    assert consumer.calls == [("resume", (tp,)), ("seek", {tp: 7})]
    assert sample(worker, "shelfq_streams_fetch_stalls_total", action="seek") == 1


def test_a_failed_seek_is_logged_and_the_worker_goes_on(caplog) -> None:
    worker = worker_with(RecordingConsumer(fail_seek=True))
    asyncio.run(worker._unstall(TP("stalls.feedback", 0), 3, "seek", 30.0))
    assert "could not seek stalls.feedback:0 to 3" in caplog.text


def test_a_revoked_partition_forgets_its_read_position() -> None:
    worker = worker_with(RecordingConsumer())
    worker.partitions = {0, 1}
    kept, revoked = TP("stalls.slates", 0), TP("stalls.slates", 1)
    worker._order.check(kept, 4, start=4)
    worker._order.check(revoked, 8, start=8)
    worker._stalls.check(revoked, 9, 0.0)
    worker.on_revoked({1})
    assert worker._order.next_offset(kept) == 5 and worker._order.next_offset(revoked) is None
    assert worker._stalls.stalled_s(revoked, 100.0) == 0.0


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
    worker.partitions = {0}
    tp = TP("stalls.impressions", 0)
    worker._start_offsets = {tp: 10}  # the group's committed offset
    worker._holes = reader = RecordingReader(holds={10, 12, 13})  # 11: a transaction marker, say
    seen: list[int] = []
    worker._dead_letter = lambda reason, detail, topic, value, key, partition, offset: seen.append(offset)

    deliver(worker, message(tp, 14), message(tp, 15), message(tp, 13), message(tp, 16))
    assert reader.reads == [("stalls.impressions", 0, 10, 14)]
    assert seen == [10, 12, 13, 14, 15, 16], "in offset order, and the repeat of 13 skipped"
    assert sample(worker, "shelfq_streams_out_of_order_total", verdict="hole") == 1
    assert sample(worker, "shelfq_streams_out_of_order_total", verdict="repeat") == 1
    # Only once what they caused went to the producer is Faust told the hole is done.
    assert consumer.calls == []
    asyncio.run(worker.after_flush())
    assert consumer.calls == [("gap", tp, 10, 13)]


def test_in_order_offsets_read_nothing_from_the_broker() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker._holes = reader = RecordingReader(holds=set())
    tp = TP("stalls.slates", 1)
    worker._start_offsets = {}  # never committed: Faust starts at the beginning
    deliver(worker, message(tp, 0), message(tp, 1), message(tp, 2))
    asyncio.run(worker.after_flush())
    assert reader.reads == [] and consumer.calls == []
    assert worker._order.next_offset(tp) == 3


def test_a_hole_of_markers_only_is_passed_without_telling_faust() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.partitions = {0}
    tp = TP("stalls.feedback", 0)
    worker._start_offsets = {tp: 4}
    worker._holes = RecordingReader(holds=set())
    deliver(worker, message(tp, 4), message(tp, 6))  # 5: a transaction's marker
    asyncio.run(worker.after_flush())
    assert consumer.calls == [] and worker._order.next_offset(tp) == 7


def test_a_hole_the_broker_cannot_give_stops_the_batch_and_withholds_its_acks() -> None:
    worker = worker_with(RecordingConsumer())
    worker.partitions = {0}
    tp = TP("stalls.impressions", 0)
    worker._start_offsets = {tp: 10}
    worker._holes = RecordingReader(holds=set(), fail=True)
    before, at_hole, after = message(tp, 10), message(tp, 12), message(tp, 13)
    with pytest.raises(HoleUnreadable):
        deliver(worker, before, at_hole, after)
    assert before.acked and at_hole.acked and after.acked, "all unflushed: Faust must record no ack"



def test_a_hole_filled_on_a_partition_revoked_before_the_flush_is_not_reported() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    worker.partitions = {0, 1}
    tp = TP("stalls.slates", 1)
    worker._start_offsets = {tp: 0}
    worker._holes = RecordingReader(holds={0})
    deliver(worker, message(tp, 1))
    worker.on_revoked({1})
    asyncio.run(worker.after_flush())
    assert consumer.calls == []


def test_an_offset_read_that_a_rebalance_overtakes_is_dropped_not_a_crash() -> None:
    worker = worker_with(RecordingConsumer())
    worker.partitions = {0}

    def committed() -> dict:
        worker.assign({0, 1})  # the assignment changes while the broker answers
        return {}

    worker._committed_offsets = committed
    worker._end_offsets = lambda: {TP("stalls.slates", 0): 5}
    asyncio.run(worker.refresh_backlog())
    assert worker._start_offsets is None, "offsets read for the old assignment must not be kept"
    worker._committed_offsets = lambda: {TP("stalls.slates", 0): 2}
    asyncio.run(worker.refresh_backlog())
    assert worker.join._backlog[0] == frozenset({"slates"})


def test_the_start_offsets_are_read_after_the_assignment_and_dropped_if_it_changed_meanwhile() -> None:
    worker = worker_with(RecordingConsumer())
    tp = TP("stalls.slates", 0)
    worker._committed_offsets = lambda: {tp: 7}

    async def recover() -> None:
        worker.on_recovered({0})
        await asyncio.sleep(0.1)  # the read runs in the background

    asyncio.run(recover())
    assert worker._start_offset(tp) == 7

    def overtaken() -> dict:
        worker.assign({0, 1})
        return {tp: 8}

    worker.assign({0})
    worker._committed_offsets = overtaken
    asyncio.run(worker._read_start_offsets(worker._assignments))
    assert worker._start_offsets is None


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
    assert worker._holes._config["isolation.level"] == worker._probe._config["isolation.level"] == "read_committed"

    asked: list = []

    class Admin:
        def list_offsets(self, request: dict, **kw) -> dict:
            asked.append(kw.get("isolation_level"))
            return {}

    worker.partitions = {0}
    worker._admin = Admin()
    worker._end_offsets()
    assert asked == [confluent_kafka.IsolationLevel.READ_COMMITTED]


def test_watermarks_stay_held_for_the_grace_after_an_outage_then_follow_the_backlog() -> None:
    # A frontend's producer that kept events through an outage reconnects after the worker:
    # until outage_grace_s has passed, every input counts as unread whatever the backlog says.
    _, worker = create_app(Settings.from_env(topic_prefix="grace."), StreamsConfig(outage_grace_s=30.0))
    worker.partitions = {0, 1}
    everything = frozenset(worker.logical.values())
    worker.hold_watermarks()  # the broker was away
    for p in worker.partitions:
        worker.join.note_backlog(p, set())  # back: the backlog read sees nothing unread yet
    worker.keep_holding()
    assert all(worker.join._backlog[p] == everything for p in worker.partitions)
    worker._held_until = 0.0  # the grace is over
    for p in worker.partitions:
        worker.join.note_backlog(p, set())
    worker.keep_holding()
    assert all(worker.join._backlog[p] == frozenset() for p in worker.partitions)
