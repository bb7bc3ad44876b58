"""The Faust worker around the pure join: ``create_app(settings, config)`` builds it.

Faust's and aiokafka's private members are reached through ``streams.faust_internals`` only.

One agent reads slates, impressions and feedback (co-partitioned by user_id) in partition
order and feeds ``streams.join.Join``. Its records live in a changelog-backed Faust table,
written with the partition of the request they belong to; user histories live in a second table
whose changelog *is* the compacted ``user-state`` topic, so every write publishes the user's
state. A timer closes the windows of quiet partitions on wall-clock time.

At-least-once: Faust flushes the producer before it commits source offsets, so everything an
event caused is durable before the event is marked consumed. Transitions are recorded as
emitted only once the broker acknowledged them (``Join.acked``); a crash in between re-emits
them with the same transition_id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from collections.abc import Iterable, Sequence
from typing import Any

import faust
import msgspec
from faust.serializers import codecs
from faust.types import TP

from shelfq.contracts.dlq import dead_letter
from shelfq.contracts.errors import EventError
from shelfq.contracts.events import Feedback, Interaction, Transition, UserState, decode, encode
from shelfq.contracts.outage import BrokerUnreachable, BrokerWatch, ConnectionNoise, install, report_client_error
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import DLQ, EVENT_OF_TOPIC, TRANSITIONS, USER_STATE
from shelfq.streams import faust_internals
from shelfq.streams.config import StreamsConfig
from shelfq.streams.gc_tuning import tune_worker_gc
from shelfq.streams.group_offsets import GroupOffsets
from shelfq.streams.join import INPUTS, Join, Output, Record
from shelfq.streams.limits import message_size, refused_for_size
from shelfq.streams.metrics import StreamsMetrics
from shelfq.streams.sequence import DeliveryOrder, HoleReader, HoleUnreadable
from shelfq.streams.stalls import StallWatch

log = logging.getLogger("shelfq.streams")
COMPONENT = "streams"
REPORT_EVERY_S = 2.0
STALL_AFTER_S = 15.0
BACKLOG_WARN_EVERY_S = 30.0  # a failing read of the offsets is said this often at most

# aiokafka logs each failed connection, metadata update, fetch and coordinator request at
# ERROR, dozens a second while the broker is down: one WARNING a minute (the worker's
# BrokerWatch says when it goes and comes back), each telling the watch.
_AIOKAFKA_NOISE = ConnectionNoise("Unable connect to node", "Unable to update metadata", "Failed fetch messages",
                                  "Group Coordinator Request failed", "Heartbeat session expired",
                                  "marking coordinator dead", "NodeNotReadyError", "Connection refused")
for _name in ("aiokafka.client", "aiokafka.conn", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator"):
    logging.getLogger(_name).addFilter(_AIOKAFKA_NOISE)


def quiet_handlers() -> None:
    """The same filter on the handlers Faust's worker set up (records of aiokafka.client were
    seen to reach them unfiltered in a worker, though not in isolation)."""
    for handler in logging.getLogger().handlers:
        if _AIOKAFKA_NOISE not in handler.filters:
            handler.addFilter(_AIOKAFKA_NOISE)


class _MsgpackRecordCodec(codecs.Codec):
    """Join records in the changelog: msgpack arrays, compact and fast; never pickle."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder(Record)

    def _dumps(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def _loads(self, s: bytes) -> Any:
        return self._decoder.decode(s)


class _UserStateCodec(codecs.Codec):
    """user-state values are the public JSON contract, since the changelog is that topic."""

    def _dumps(self, obj: Any) -> bytes:
        return encode(obj)

    def _loads(self, s: bytes) -> Any:
        return decode(s, UserState)


class _Utf8Codec(codecs.Codec):
    """Keys (request and user ids) as UTF-8 text."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else obj

    def _loads(self, s: bytes) -> Any:
        return s.decode()


codecs.register("shelfq-utf8", _Utf8Codec())
_RECORD_CODEC = _MsgpackRecordCodec()
codecs.register("shelfq-join-record", _RECORD_CODEC)
codecs.register("shelfq-user-state", _UserStateCodec())


class JoinTable(faust.Table):
    """The join's records; tells the worker when a rebalance's recovery is complete."""

    on_recovered: Any = None

    async def on_recovery_completed(self, active_tps: set, standby_tps: set) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.on_recovered is not None:
            self.on_recovered({tp.partition for tp in active_tps})


class _Batch:
    """A batch's decoded events, in processing order, with where each came from."""

    __slots__ = ("events", "origins", "counts")

    def __init__(self) -> None:
        self.events: list[tuple[int, str, Any]] = []
        self.origins: list[tuple[int, int, float]] = []  # partition, offset, handed over (monotonic)
        self.counts = dict.fromkeys(INPUTS, 0)  # messages consumed by topic, valid or not


@dataclass
class JoinWorker:
    """Routes Faust events through the join and its outputs back to Kafka.

    Outputs are gathered per batch (record and user-state writes coalesced by key) and sent
    straight to the app's producer by ``flush()``, which the agent awaits before Faust acks the
    batch: Faust's own per-message send buffer is far too slow for this volume.
    """

    app: faust.App
    settings: Settings
    config: StreamsConfig
    records: JoinTable
    histories: faust.Table
    metrics: StreamsMetrics = field(default_factory=StreamsMetrics)

    def __post_init__(self) -> None:
        s = self.settings
        self.join = Join(self.config.join, self.records.data)
        self._held_until = 0.0  # monotonic time until which watermarks stay held after an outage
        self.partitions: set[int] = set()
        self.logical = {s.topic(t): t for t in INPUTS}
        self.transitions_topic = s.topic(TRANSITIONS)
        self.dlq_topic = s.topic(DLQ)
        self.user_state_topic = s.topic(USER_STATE)
        self.records.on_recovered = self.on_recovered
        self._outbox: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []
        self._record_writes: dict[str, tuple[int, Record | None]] = {}
        self._user_writes: dict[str, tuple[int, UserState]] = {}
        self._flush_lock = asyncio.Lock()
        self.max_message_bytes = self.config.max_message_bytes
        # Messages the broker refused in a batch for its size, to send again alone (the broker
        # refuses a whole batch, so a small batch-mate is refused with a large message).
        self._alone: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self._order = DeliveryOrder()
        # Two readers of offsets Faust did not deliver: one for holes (on the event loop), one
        # for probes of a partition's unread tail (in executor threads). Neither joins a group.
        reader_config = s.confluent_config(**{"group.id": f"{self.app.conf.id}-holes"})
        self._holes = HoleReader(reader_config)
        self._filled: list[tuple[TP, int, int]] = []  # holes processed, to tell Faust about
        self._probe = HoleReader(reader_config, timeout_s=5.0)
        self._probed: dict[TP, tuple[int, int, bool]] = {}  # position, end: whether messages lie between
        self._assignments = 0  # counts assignment changes, so a refresh can tell it is stale
        self._last_report = 0.0
        self._start_offsets: dict[TP, int] | None = None
        self._admin: Any = None
        self._group_offsets = GroupOffsets(s.confluent_config(error_cb=report_client_error), self.app.conf.id)
        self._reported = self.join.outcomes.copy()
        self._input_counters = {t: self.metrics.inputs.labels(t) for t in INPUTS}
        self._stalls = StallWatch(STALL_AFTER_S)
        self._backlog_warned = 0.0
        self._watching: asyncio.Future | None = None
        #: Waits out a broker outage (``contracts.outage``): the clients reconnect on their own,
        #: Faust's producer keeps what it could not send and its commit waits for the coordinator.
        self.watch = install(BrokerWatch("streams worker", s.bootstrap, s.broker_outage_s, self._ping_broker))

    def on_recovered(self, partitions: set[int]) -> None:
        """Take up ``partitions``, and learn where Faust starts delivering each of them (in the
        background: awaiting the broker here, inside Faust's recovery, left partitions without
        a committed offset undelivered until a seek)."""
        self.assign(partitions)
        asyncio.ensure_future(self._read_start_offsets(self._assignments))

    async def _read_start_offsets(self, assignment: int) -> None:
        try:
            starts = await asyncio.get_running_loop().run_in_executor(None, self._committed_offsets)
        except Exception as exc:  # noqa: BLE001 - then Faust's own copy, or the first delivered
            log.warning("could not read the committed offsets: %s", exc)
            return
        if assignment == self._assignments and self._start_offsets is None:
            self._start_offsets = starts
            log.info("committed offsets at the assignment: %s",
                     {f"{tp.topic}:{tp.partition}": offset for tp, offset in sorted(starts.items())})

    def assign(self, partitions: set[int]) -> None:
        """Own exactly ``partitions`` from now on; their records are restored."""
        self._forget(set(range(self.settings.partitions)) - partitions)
        self._assignments += 1
        self.partitions = partitions
        self._start_offsets = None  # the assignment changed: read the committed offsets again
        self.join.rebuild(partitions, time.time())
        self.metrics.partitions.set(len(partitions))
        log.info("join owns partitions %s with %d records", sorted(partitions), len(self.join.records))

    def on_revoked(self, partitions: set[int]) -> None:
        """Stop acting for partitions another worker is about to own."""
        self._forget(partitions)
        self._assignments += 1
        self._start_offsets = None
        self.partitions -= partitions
        self.join.rebuild(self.partitions, time.time())
        self.metrics.partitions.set(len(self.partitions))

    def _forget(self, partitions: set[int]) -> None:
        """Drop what was known of these partitions' read positions: if one comes back, another
        worker may have read on meanwhile, and the group's committed offsets say where."""
        for full in self.logical:
            for partition in partitions:
                tp = TP(full, partition)
                self._order.forget(tp)
                self._stalls.forget(tp)
                self._probed.pop(tp, None)
        self._filled = [f for f in self._filled if f[0].partition not in partitions]

    def on_batch(self, events: list[faust.EventT]) -> None:
        """Process a batch Faust's stream handed over: each message in offset order (holes
        filled, repeats skipped), decoded, then all of them through the join in one
        ``Join.process_batch`` call, which gives what one ``process`` call per event would."""
        try:
            self.process_messages(
                ((m.tp, m.topic, m.partition, m.offset, m.key, m.value,
                  # Emit latency counts from the moment Faust handed the message to the stream,
                  # so the time it waited in the batch buffer is included.
                  m.time_in if m.time_in is not None else time.monotonic())
                 for m in (event.message for event in events)), time.time())
        except HoleUnreadable:
            # Faust must record no ack for this batch: what it caused is not flushed, and its
            # commit could pass the hole. The restart replays from the last batch flushed.
            for each in events:
                each.message.acked = True
            raise

    async def on_records(self, batch: Sequence[tuple[TP, Sequence[Any]]], handed: float) -> list[tuple[TP, int, int]]:
        """The batch consumer's hand-over (``SHELFQ_STREAMS_BATCH_CONSUMER``): each partition's
        fetched records, handed over at monotonic time ``handed`` (where emit latency starts).
        Processed as ``on_batch`` processes Faust's messages, then flushed; returns, per
        partition still owned, the offsets done (``(tp, first, end)``: ``first`` to ``end`` - 1,
        the holes filled or passed included), which the consumer records as acked. A hole the
        broker cannot give stops the worker with nothing acked."""
        order = self._order
        before: dict[TP, int | None] = {}
        for tp, _records in batch:
            first = order.next_offset(tp)
            before[tp] = first if first is not None else self._start_offset(tp)
        try:
            self.process_messages(((tp, r.topic, r.partition, r.offset, r.key, r.value, handed)
                                   for tp, records in batch for r in records), time.time())
        except HoleUnreadable as exc:
            log.error("%s; stopping the worker", exc)
            await self.app.crash(exc)
            return []
        # The acked ranges cover the holes: Faust needs no gap for them (and a gap over acked
        # offsets would repeat them in its acked list).
        self._filled.clear()
        await self.flush()
        done = []
        for tp, records in batch:
            end = order.next_offset(tp)
            if tp.partition in self.partitions and end is not None:  # a partition revoked meanwhile starts afresh
                first = before[tp]
                done.append((tp, records[0].offset if first is None else first, end))
        return done

    def process_messages(self, messages: Iterable[tuple[TP, str, int, int, bytes | None, bytes | None, float]],
                         now: float) -> None:
        """``(tp, topic, partition, offset, key, value, handed over)`` of the input topics, at
        wall time ``now``: in offset order per partition (holes read from the broker and
        processed first, repeats skipped), decoded (invalid ones dead-lettered), then joined in
        one ``Join.process_batch`` call. Raises ``HoleUnreadable`` before anything is joined
        if a hole cannot be read."""
        check, next_offset = self._order.check, self._order.next_offset
        batch = _Batch()
        for tp, full_topic, partition, offset, key, value, started in messages:
            expected = next_offset(tp)
            if expected is None:  # the first since the assignment: Faust starts at the committed offset
                expected = self._start_offset(tp)
            verdict = check(tp, offset, expected)
            if verdict == "repeat":
                self.metrics.out_of_order.labels("repeat").inc()
                continue
            if verdict == "hole":
                self._fill(tp, offset, expected, started, batch)  # type: ignore[arg-type]
            self._decode(batch, full_topic, partition, offset, key, value, started)
        self._join_batch(batch, now)

    def _start_offset(self, tp: TP) -> int | None:
        """Where Faust starts delivering ``tp`` after the assignment: the group's committed
        offset as the broker had it at the assignment (Faust's own copy can still be empty when
        the first messages arrive); ``None`` (take the first delivered) if neither knows."""
        if self._start_offsets is not None:
            return self._start_offsets.get(tp, 0)
        return faust_internals.committed_offset(self.app.consumer, tp)

    def _fill(self, tp: TP, offset: int, begin: int, started: float, batch: _Batch) -> None:
        """Faust left out the offsets before ``offset`` (``streams.sequence``): read them from
        the broker and process them first. This blocks the event loop for a fetch: rare, except
        with inputs written in transactions, whose every marker is such a hole."""
        missing = self._holes.read(tp.topic, tp.partition, begin, offset)
        self.metrics.out_of_order.labels("hole").inc()
        if not missing:  # markers, or deleted records: Faust's commit passes them unaided
            log.debug("%s:%d: offsets %d to %d hold no messages", tp.topic, tp.partition, begin, offset - 1)
            return
        log.warning("%s:%d: Faust left out offsets %d to %d; read %d messages of them from the broker",
                    tp.topic, tp.partition, begin, offset - 1, len(missing))
        for m in missing:
            self._decode(batch, m.topic(), m.partition(), m.offset(), m.key(), m.value(), started)
        self._filled.append((tp, missing[0].offset(), offset))

    def _decode(self, batch: _Batch, full_topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None, started: float) -> None:
        """Decode one message into ``batch``; an invalid one is dead-lettered at once."""
        topic = self.logical[full_topic]
        batch.counts[topic] += 1
        try:
            parsed = decode(value, EVENT_OF_TOPIC[topic], max_bytes=self.settings.max_event_bytes)  # type: ignore[arg-type]
        except EventError as exc:
            self._dead_letter("invalid", str(exc), full_topic, value, key, partition, offset)
            self.metrics.events.labels(topic, "invalid").inc()
            return
        batch.events.append((partition, topic, parsed))
        batch.origins.append((partition, offset, started))

    def _join_batch(self, batch: _Batch, now: float) -> None:
        for topic, n in batch.counts.items():
            if n:
                self._input_counters[topic].inc(n)
        if not batch.events:
            return
        outputs = self.join.process_batch(batch.events, now=now)
        feedback_counter = self.metrics.feedback
        for out, (partition, offset, started) in zip(outputs, batch.origins):
            for fb in out.attributed:  # counted once: duplicates and replays leave history alone
                feedback_counter.labels(fb.event).inc()
                self._update_user_state(partition, fb)
            if out.transitions or out.dead_letters:
                self._handle(out, started, origin=(partition, offset))
            elif out.writes:
                self._record_writes.update(out.writes)

    async def after_flush(self) -> None:
        """Tell Faust the holes processed are done, so its commit passes them; only now that
        what they caused is with the producer (Faust flushes it before committing)."""
        consumer = self.app.consumer
        filled, self._filled = self._filled, []
        for tp, begin, end in filled:
            if tp.partition in self.partitions:  # a partition revoked meanwhile starts afresh
                await faust_internals.add_gap(consumer, tp, begin, end - 1)

    def close(self) -> None:
        self._holes.close()
        self._probe.close()
        self._group_offsets.close()

    def on_tick(self, now: float | None = None) -> None:
        """Close the windows of every owned partition that the clock (``now``, by default the
        wall clock) has passed, and refresh the gauges every ``REPORT_EVERY_S``."""
        started, now = time.monotonic(), time.time() if now is None else now
        for partition in sorted(self.partitions):
            self._handle(self.join.tick(partition, now), started)
        if now - self._last_report >= REPORT_EVERY_S:  # the gauges scan every record
            self._last_report = now
            self._report()

    async def refresh_backlog(self) -> None:
        """Tell the join which inputs have unread messages, from the broker's log-end offsets
        against the next offset processed (or, before anything was processed since the
        assignment, the group's committed offset: where Faust starts delivering).

        Faust's own view cannot answer this: its fetch position counts messages queued inside
        Faust as read, a paused partition has no fresh highwater, and asking its consumer for
        a position can block the consumer thread. The admin requests run off the event loop."""
        loop = asyncio.get_running_loop()
        assignment = self._assignments
        try:
            starts = self._start_offsets
            if starts is None:
                starts = await loop.run_in_executor(None, self._committed_offsets)
            ends = await loop.run_in_executor(None, self._end_offsets)
        except Exception as exc:  # noqa: BLE001 - the backlog is unknown until the broker answers
            self.watch.lost(str(exc))
            self.hold_watermarks()
            now = time.monotonic()
            if now - self._backlog_warned >= BACKLOG_WARN_EVERY_S:  # every tick while the broker is away
                self._backlog_warned = now
                log.warning("could not read offsets for the watermark: %s", exc)
            return
        if assignment != self._assignments:
            return  # partitions changed hands while the broker answered: ask again next tick
        self._start_offsets = starts
        now = time.monotonic()
        lags: dict[tuple[str, int], int] = {}
        for partition in sorted(self.partitions):
            lagging = set()
            for full, topic in self.logical.items():
                tp = TP(full, partition)
                position = self._order.next_offset(tp)
                if position is None:
                    position = starts.get(tp, 0)
                end = ends.get(tp, 0)
                lags[(full, partition)] = max(0, end - position)
                if end <= position:
                    self._stalls.forget(tp)
                    continue
                holds = await self._holds_messages(tp, position, end)
                if assignment != self._assignments:
                    return  # partitions changed hands while the broker answered
                if holds:
                    lagging.add(topic)
                    await self._unstall(tp, position, self._stalls.check(tp, position, now), now)
            self.join.note_backlog(partition, lagging)
        self.metrics.consumer.set_lag(lags)

    def hold_watermarks(self) -> None:
        """While the broker cannot say what is unread, count every input as unread, so no
        input goes idle and the wall clock moves no watermark: events sent meanwhile (a
        frontend's producer keeps them while the broker is away) arrive with the event times
        of the outage, and a watermark that had moved on would take them for late or orphans.
        The hold lasts ``outage_grace_s`` past the outage (``keep_holding``): those producers
        reconnect after the worker does."""
        self._held_until = time.monotonic() + self.config.outage_grace_s
        self._hold()

    def keep_holding(self) -> None:
        """Within ``outage_grace_s`` of an outage, hold the watermarks still (after
        ``refresh_backlog``, which saw only what has arrived so far)."""
        if time.monotonic() < self._held_until:
            self._hold()

    def _hold(self) -> None:
        for partition in self.partitions:
            self.join.note_backlog(partition, set(self.logical.values()))

    async def _holds_messages(self, tp: TP, position: int, end: int) -> bool:
        """Whether offsets ``position`` to ``end`` - 1 hold messages. They do while they are
        being read; a position that stays put may face only transaction markers (a producer of
        our inputs that uses transactions ends each one with a marker, which takes an offset
        but is never delivered): then the input is caught up, and must be free to go idle."""
        if not self._stalls.unmoved(tp, position):
            return True  # it moved since the last look: being read
        known = self._probed.get(tp)
        if known is None or known[:2] != (position, end):
            loop = asyncio.get_running_loop()
            try:
                found = await loop.run_in_executor(None, self._probe.read, tp.topic, tp.partition, position, end)
            except Exception as exc:  # noqa: BLE001 - assume there are, until position or end move
                log.warning("could not look at %s:%d from offset %d: %s", tp.topic, tp.partition, position, exc)
                found = True
            known = self._probed[tp] = (position, end, bool(found))
        return known[2]

    async def _unstall(self, tp: TP, position: int, action: str | None, now: float) -> None:
        """Get a partition that delivers nothing despite unread messages going again
        (``streams.stalls``): resume its fetch, and if that did not help, seek back to the
        first offset not processed."""
        if action is None:
            return
        consumer = self.app.consumer
        log.warning("no message from %s:%d for %.0fs though offset %d is unread (paused=%s, buffered=%s); %s",
                    tp.topic, tp.partition, self._stalls.stalled_s(tp, now), position,
                    faust_internals.is_paused(consumer, tp), faust_internals.is_buffered(consumer, tp),
                    "resuming its fetch" if action == "resume" else f"fetching again from offset {position}")
        self.metrics.stalls.labels(action).inc()
        if action == "resume":
            faust_internals.resume_fetch(consumer, tp)
            return
        try:  # on the consumer's own thread; also resets Faust's read offset, so it delivers again
            await consumer.seek_wait({tp: position})
        except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile; the next tick looks again
            log.warning("could not seek %s:%d to %d: %s", tp.topic, tp.partition, position, exc)

    def watch_broker(self) -> None:
        """While the broker may be away, ask it (in the background, off the event loop) whether
        it is back; stop the worker once it was away for longer than ``broker_outage_s``."""
        if self.watch.settled or (self._watching is not None and not self._watching.done()):
            return
        self._watching = asyncio.ensure_future(self._check_broker())

    async def _check_broker(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.watch.check)
        except BrokerUnreachable as exc:
            log.error("%s", exc)
            await self.app.crash(exc)

    def _ping_broker(self) -> None:
        self._admin_client().list_topics(timeout=2)

    def _admin_client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            from shelfq.contracts.outage import report_client_error

            self._admin = AdminClient(self.settings.confluent_config(error_cb=report_client_error))
        return self._admin

    def _end_offsets(self) -> dict[TP, int]:
        """Each input partition's last stable offset: the end of what a read_committed
        consumer can read now (a transaction still open is not input yet)."""
        from confluent_kafka import IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        request = {TopicPartition(full, p): OffsetSpec.latest() for full in self.logical for p in self.partitions}
        if not request:
            return {}
        futures = self._admin_client().list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED,
                                                    request_timeout=5)
        return {TP(tp.topic, tp.partition): f.result(timeout=10).offset for tp, f in futures.items()}

    def _committed_offsets(self) -> dict[TP, int]:
        """The group's committed offsets of the owned input partitions (0 where none: the group
        reads from the beginning). Not through the Admin API: it aborts the process on a
        dropped connection (``streams.group_offsets``)."""
        from confluent_kafka import TopicPartition

        request = [TopicPartition(full, p) for full in self.logical for p in sorted(self.partitions)]
        return {TP(*tp): offset for tp, offset in self._group_offsets.read(request, timeout_s=10).items()}

    async def flush(self) -> None:
        """Send everything gathered so far to the producer (Faust flushes it before committing).

        One flush at a time: the agent and the timer both flush, and a record's newer state
        must never be overtaken by an older one on the changelog."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        """Outputs first, then user histories; the join records only once the broker has
        those histories. A record and the history its feedback went to are two writes to two
        topics, and a crash may land between them; the feedback is then read again. Were the
        record on the broker and the history not, the replay would be a duplicate to the join
        and the interaction lost from the history: the order rules that out. Were the history
        there and the record not, the replay attributes it again, and the history, which
        recognises what it holds (``_update_user_state``), does not count it twice."""
        await self._send_alone()
        record_writes, user_writes = self._record_writes, self._user_writes
        self._record_writes, self._user_writes = {}, {}
        for user, (partition, state) in user_writes.items():
            value = encode(state)
            if self._fits(self.user_state_topic, user.encode(), value, f"the history of user {user}", partition):
                self._outbox.append((self.user_state_topic, user.encode(), value, partition, None))
                self.metrics.user_states.inc()
        outbox, self._outbox = self._outbox, []
        histories = await self._send(outbox)
        if histories:  # one round trip, in flushes that attributed feedback only
            await asyncio.wait(histories)
            if any(f.cancelled() or f.exception() is not None for f in histories):
                return  # _on_sent stops the worker: its records must not go without their histories
        record_topic = self.records.changelog_topic.get_topic_name()
        for key, (partition, record) in record_writes.items():
            if partition not in self.partitions:
                continue  # revoked meanwhile: the new owner writes this record
            value = None if record is None else _RECORD_CODEC.dumps(record)
            if self._fits(record_topic, key.encode(), value, f"join record {key}", partition):
                self._outbox.append((record_topic, key.encode(), value, partition, None))
        outbox, self._outbox = self._outbox, []
        await self._send(outbox)

    async def _send(self, outbox: list[tuple[str, bytes | None, bytes | None, int | None, Any]]) -> list[Any]:
        """Hand ``outbox`` to the producer; returns the futures of its user-state writes."""
        send, histories = self.app.producer.send, []
        for topic, key, value, partition, callback in outbox:
            fut = await send(topic, key, value, partition, None, None)
            fut.add_done_callback(callback if callback is not None
                                  else lambda f, t=topic, k=key, v=value: self._on_sent(f, t, k, v))
            if topic == self.user_state_topic:
                histories.append(fut)
        return histories

    def _fits(self, topic: str, key: bytes | None, value: bytes | None, what: str, partition: int | None) -> bool:
        """Whether a write of the worker's own state fits the producer; if not, it is
        dead-lettered (reason ``too_large``) and not sent, so the worker goes on. The state
        stays in memory: only a restart before its next write that fits loses it. Inputs are
        bounded (``max_event_bytes``), so this takes a hostile slate or impression near that
        bound, or a ``max_message_bytes`` below it."""
        size = message_size(key, value)
        if size <= self.max_message_bytes:
            return True
        log.warning("%s is %d bytes, over SHELFQ_STREAMS_MAX_MESSAGE_BYTES (%d): not stored, dead-lettered",
                    what, size, self.max_message_bytes)
        self._dead_letter("too_large", f"{what} is {size} bytes, over the worker's max_message_bytes "
                          f"({self.max_message_bytes}); kept in memory only", topic, value, key, partition, None)
        return False

    async def _send_alone(self) -> None:
        """Send each message the broker refused in a batch again, in a batch of its own: the
        producer is flushed before and after it, and nothing else sends meanwhile (this runs
        under the flush lock). Its callback judges the answer. Rare: with
        ``max_message_bytes`` at most the topics' ``max.message.bytes`` the broker never
        refuses for size."""
        alone, self._alone = self._alone, []
        producer = self.app.producer
        for topic, key, value, callback in alone:
            await producer.flush()
            fut = await producer.send(topic, key, value, None, None, None)
            fut.add_done_callback(callback)
            await producer.flush()

    def _handle(self, out: Output, started: float, origin: tuple[int, int] | None = None) -> None:
        for transition in out.transitions:
            key, value = transition.user_id.encode(), encode(transition)
            size = message_size(key, value)
            if size > self.max_message_bytes:  # send() would raise: never queue it
                self._transition_too_large(transition, key, value, f"it is {size} bytes, over the worker's "
                                           f"max_message_bytes ({self.max_message_bytes})")
                continue
            self._outbox.append((self.transitions_topic, key, value, None,
                                 lambda fut, t=transition, v=value: self._on_acked(fut, t, started, v)))
        for dl in out.dead_letters:
            # The event in hand is the one dead-lettered unless it was held earlier (then its
            # offset is not known here).
            partition, offset = origin if origin is not None else (None, None)
            self._dead_letter(dl.reason, dl.detail, self.settings.topic(dl.topic), encode(dl.event),
                              dl.event.user_id.encode(), partition, offset)
        self._record_writes.update(out.writes)

    def _on_acked(self, fut: Any, transition: Transition, started: float, value: bytes, alone: bool = False) -> None:
        if not fut.cancelled() and refused_for_size(fut.exception()):
            key = transition.user_id.encode()
            if not alone:  # perhaps a batch-mate's fault: judged when sent alone; in flight meanwhile
                self._alone.append((self.transitions_topic, key, value,
                                    lambda f, t=transition: self._on_acked(f, t, started, value, alone=True)))
                return
            self._transition_too_large(transition, key, value, f"the broker refused it ({message_size(key, value)} "
                                       f"bytes, sent alone; over the topic's max.message.bytes): {fut.exception()}")
            return
        if fut.cancelled() or fut.exception() is not None:
            # Not on the broker: emit it again at the next watermark step rather than lose it.
            log.warning("transition %s was not delivered (%s); it will be sent again",
                        transition.transition_id, "cancelled" if fut.cancelled() else fut.exception())
            self.metrics.send_failures.labels(TRANSITIONS).inc()
            self.join.failed(transition)
            return
        self.metrics.emit_latency.observe(time.monotonic() - started)
        self.metrics.count_transition(transition)  # overall and by experiment arm
        self._record_writes.update(self.join.acked(transition).writes)

    def _transition_too_large(self, transition: Transition, key: bytes, value: bytes, detail: str) -> None:
        """A transition that cannot be sent is dead-lettered, and its record settled as if the
        broker had it: re-emitting it (at every watermark step, or after every restart) could
        never succeed, and would hold its record open for ever."""
        log.warning("transition %s dead-lettered: %s", transition.transition_id, detail)
        self._dead_letter("too_large", f"transition {transition.transition_id}: {detail}", self.transitions_topic,
                          value, key, None, None)
        self._record_writes.update(self.join.acked(transition).writes)

    def _on_sent(self, fut: Any, topic: str, key: bytes | None = None, value: bytes | None = None,
                 alone: bool = False) -> None:
        """Any other send (join records, user-state, dead letters) that fails stops the worker:
        its source offsets must not be committed, and a restart replays from them. A dead
        letter the broker refuses for its size is sent again alone, and dropped (logged) if
        refused alone."""
        if fut.cancelled() or fut.exception() is None:
            return
        exc = fut.exception()
        if topic == self.dlq_topic and refused_for_size(exc):
            if not alone:
                self._alone.append((topic, key, value, lambda f: self._on_sent(f, topic, key, value, alone=True)))
                return
            self.metrics.send_failures.labels(topic).inc()
            log.error("the broker refused a dead letter of %d bytes sent alone (over the max.message.bytes of %s): "
                      "%s; it is dropped", message_size(key, value), topic, exc)
            return
        self.metrics.send_failures.labels(topic).inc()
        if refused_for_size(exc):
            log.error("the broker refused a message to %s for its size (%s): SHELFQ_STREAMS_MAX_MESSAGE_BYTES (%d) "
                      "must be at most the topic's max.message.bytes; stopping the worker",
                      topic, exc, self.max_message_bytes)
        else:
            log.error("a message to %s was not delivered (%s); stopping the worker", topic, exc)
        asyncio.ensure_future(self.app.crash(exc))

    def _update_user_state(self, partition: int, fb: Feedback) -> None:
        """Append the interaction to the user's history; its table write publishes user-state.

        An interaction the history already holds (the same item, kind and event time) is a
        replay, not a new one: feedback whose history reached the broker before a crash, and
        its join record did not, is read and attributed again (``_flush``)."""
        previous = self.histories.data.get(fb.user_id)
        history = list(previous.history) if previous is not None else []
        if fb.item_id is not None:
            interaction = Interaction(item_id=fb.item_id, event=fb.event, ts=fb.ts)  # type: ignore[arg-type]
            if interaction in history:
                return
            history.append(interaction)
        state = UserState(user_id=fb.user_id, history=history[-self.config.join.history_length:], ts=fb.ts)
        self.histories.data[fb.user_id] = state
        self._user_writes[fb.user_id] = (partition, state)

    def _dead_letter(self, reason: str, detail: str, topic: str, value: bytes | None, key: bytes | None,
                     partition: int | None, offset: int | None) -> None:
        self.metrics.dead_letters.labels(reason).inc()
        # Its value is cut to dlq_max_value_bytes; should the letter still not fit (a tiny
        # max_message_bytes, or JSON escapes that multiply the value), cut shorter, then none.
        for cut in (self.settings.dlq_max_value_bytes, self.max_message_bytes // 8, 0):
            record = encode(dead_letter(COMPONENT, reason, topic, value, key=key, partition=partition, offset=offset,
                                        detail=detail, max_value_bytes=min(cut, self.settings.dlq_max_value_bytes)))
            if message_size(key, record) <= self.max_message_bytes:
                self._outbox.append((self.dlq_topic, key, record, None, None))
                return
        self.metrics.send_failures.labels(self.dlq_topic).inc()
        log.error("a dead letter (%s, %s) is %d bytes even without its value, over max_message_bytes (%d): dropped",
                  reason, topic, message_size(key, record), self.max_message_bytes)

    def _report(self) -> None:
        """Move the join's outcome counts into the metrics; refresh the gauges."""
        for (topic, outcome), n in self.join.outcomes.items():
            if n != self._reported[(topic, outcome)]:
                self.metrics.events.labels(topic, outcome).inc(n - self._reported[(topic, outcome)])
        self._reported = self.join.outcomes.copy()
        pending = self.join.pending()
        for topic in INPUTS:
            self.metrics.pending_events.labels(topic).set(pending[topic])
        self.metrics.pending_items.set(self.join.pending_items())
        self.metrics.records.set(len(self.join.records))


#: Where Faust keeps its data directory (empty: the tables are in memory); Faust fills in the app id.
FAUST_DATADIR = os.path.join(tempfile.gettempdir(), "shelfq-faust-{conf.id}-data")


def create_app(settings: Settings, config: StreamsConfig) -> tuple[faust.App, JoinWorker]:
    """Build the Faust app and its worker logic for these settings (nothing runs yet)."""
    app = faust.App(
        f"{settings.topic_prefix}streams",
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        # Faust makes a data directory even for in-memory tables; keep it out of the cwd.
        datadir=FAUST_DATADIR,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Outputs wait for a broker that is away for as long as the worker waits for it.
        producer_request_timeout=max(1200.0, settings.broker_outage_s + 60.0),
        # The worker measures every output against this before it sends (streams.limits).
        producer_max_request_size=config.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        broker_commit_interval=config.commit_interval_s,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=3.0,
        broker_max_poll_records=config.batch_size,
        consumer_max_fetch_size=config.fetch_partition_bytes,
        stream_processing_timeout=config.stall_timeout_s,
        broker_commit_livelock_soft_timeout=config.stall_timeout_s,
        stream_buffer_maxsize=4 * config.batch_size,
        # Metadata every 10 s instead of 5 min: a worker that joined while its topics were not yet
        # in its metadata snapshot (seen on loaded machines right after the topics were created)
        # assigns itself nothing, and only a metadata refresh shows the change and rejoins.
        consumer_metadata_max_age_ms=10_000,
    )
    # Read committed records only, as the worker's own readers of holes and tails do.
    faust_internals.use_read_committed_consumer(app)
    records = JoinTable(app, name="join-records", default=None, beacon=app.tables.beacon, partitions=settings.partitions)
    # A changelog, declared as Faust declares its own (acks=False): only recovery reads it, and
    # no offset of it is ever committed. With acks on, Faust's stall detector took its assigned
    # partitions, which grow with every write but feed no stream, for stalled input and logged
    # an ERROR for each every 2.5 s once stall_timeout_s had passed.
    user_state_topic = app.topic(settings.topic(USER_STATE), key_serializer="shelfq-utf8",
                                 value_serializer="shelfq-user-state", partitions=settings.partitions,
                                 compacting=True, internal=False, acks=False)
    histories = app.Table("user-history", default=None, partitions=settings.partitions,
                          changelog_topic=user_state_topic)
    # Faust derives a table's serializers from its key/value types (JSON by default); ours are
    # codecs, set before the changelog topics are first built.
    for table, value_codec in ((records, "shelfq-join-record"), (histories, "shelfq-user-state")):
        table.key_serializer, table.value_serializer = "shelfq-utf8", value_codec
    app.tables.add(records)  # builds its changelog topic, now with the codecs above
    worker = JoinWorker(app, settings, config, records, histories)
    if config.batch_consumer:  # fetched batches straight to the worker, past Faust's per-message path
        faust_internals.use_batch_consumer(app, worker.on_records, worker.logical)
    source = app.topic(*(settings.topic(t) for t in INPUTS),
                       key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="join")
    async def join_agent(stream: faust.StreamT) -> None:
        # Faust acks a batch's events only when the next batch is asked for, i.e. after the
        # flush: offsets never run ahead of what the batch caused.
        async for batch in stream.take_events(config.batch_size, within=config.batch_wait_s):
            try:
                worker.on_batch(batch)
            except HoleUnreadable as exc:
                log.error("%s; stopping the worker", exc)
                await app.crash(exc)
                return
            await worker.flush()
            await worker.after_flush()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender: faust.App, **_: Any) -> None:
        worker.close()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: faust.App, assigned: set, **_: Any) -> None:
        # Faust has no setting for either (streams.faust_internals.tune_fetches says why they matter).
        faust_internals.tune_fetches(app, config.fetch_wait_s, config.fetch_min_bytes)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: faust.App, revoked: set, **_: Any) -> None:
        worker.on_revoked({tp.partition for tp in revoked if tp.topic in worker.logical})

    @app.timer(interval=config.tick_s)
    async def tick() -> None:
        quiet_handlers()
        worker.watch_broker()
        if worker.watch.down:
            worker.hold_watermarks()
        else:
            await worker.refresh_backlog()
            worker.keep_holding()
        worker.on_tick()
        await worker.flush()

    return app, worker


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The aiokafka translation of the Kafka client settings, as Faust credentials."""
    kw = settings.aiokafka_config()
    protocol = kw.get("security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kw.get("sasl_plain_username"), password=kw.get("sasl_plain_password"),
                                     mechanism=kw.get("sasl_mechanism", "PLAIN"), ssl_context=kw.get("ssl_context"))
    if protocol == "SSL":
        return faust.SSLCredentials(kw["ssl_context"])
    return None


def run_worker(settings: Settings, config: StreamsConfig, max_seconds: float | None = None,
               log_level: str = "warning") -> None:
    """Run a streams worker until SIGINT/SIGTERM (or ``max_seconds``)."""
    try:  # uvloop's event loop cuts Faust's per-event asyncio overhead
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app, worker = create_app(settings, config)
    if config.metrics_port:
        worker.metrics.serve(config.metrics_port, config.metrics_addr)
    faust_worker = faust.Worker(app, loglevel=log_level, quiet=True)
    # aiokafka formats a debug record per message sent when its logger lets DEBUG through.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, logging.getLevelName(log_level.upper())))
    if max_seconds is not None:
        faust_worker.loop.call_later(max_seconds, os.kill, os.getpid(), signal.SIGTERM)
    tune_worker_gc()  # the join's live records would be walked by every older collection
    faust_worker.execute_from_commandline()

