"""The one door to Faust's and aiokafka's internals: every private member the worker uses.

Checked against faust-streaming 0.15.3 and aiokafka 0.14.0 (pyproject.toml pins Faust to
0.15.x). Each use below is one the worker cannot do without and no public setting or method
gives; an upgrade that moves one of these members breaks this module only (ruff's private-member
rule is off here and nowhere else in the worker), and the streams tests say so
(tests/unit/test_delivery_guards.py, tests/integration/test_streams.py).

- ``use_read_committed_consumer``: Faust's consumer reads ``read_uncommitted`` unless the
  processing guarantee is ``exactly_once``, and has no setting for it; aiokafka takes the level
  as an argument Faust does not pass on. Without it, records of a transaction a producer of our
  inputs aborted would be joined. Overrides Faust's ``_new_consumer_thread`` and its thread's
  ``_create_worker_consumer``, and sets aiokafka's ``_isolation_level`` before the consumer starts.
- ``committed_offset``: Faust's own copy of the group's committed offset (``_committed_offset``),
  where it starts delivering a partition: the worker's fallback until the broker's answer is in.
- ``add_gap``: Faust commits a partition up to its first offset not acked, and can pass a hole at
  the head of what it acked (faust-streaming #606, open; issue 16 also names #707 and #596).
  Offsets the worker read from the broker itself are handed to Faust's ``_add_gap``, as Faust
  does for offsets its own stream skips, so its commit goes on past them.
- ``withhold_acks``: a batch whose hole the broker cannot give must leave no ack behind (what it
  caused is not flushed, and Faust's commit could pass the hole). Faust acks a message unless it
  is marked ``acked`` already; its messages are marked so.
- ``is_paused``, ``is_buffered``, ``resume_fetch``: the stall guard (``streams.backlog``). Faust
  takes a partition whose stream buffer filled out of its fetch (``_buffered_partitions``) and
  puts it back when the buffer drains, and can miss putting it back across a rebalance, so the
  partition delivers nothing. The guard resumes its fetch and clears that mark, as Faust's
  ``on_buffer_drop`` does, and reads both sets for its log line.
- ``tune_fetches``: Faust builds aiokafka's consumer without ``fetch_min_bytes`` and
  ``fetch_max_wait_ms``; they are set on its fetcher (``_thread``, ``_ensure_consumer``,
  ``_fetcher``), which reads both each time it builds a request.

- ``BatchDrainingConsumer`` (``SHELFQ_STREAMS_BATCH_CONSUMER``): Faust's ``_drain_messages``
  awaits ``wait_first(callback(message), suspend_flow.wait())`` for every message, then its
  conductor and the stream iterator handle it again: 100-170 µs a message, most of the worker's
  time. This consumer overrides ``_drain_messages`` to hand each fetched batch (Faust's own
  ``_wait_next_records``) to the worker at once, with flow control and the consumer generation
  checked once per batch, and records the batch's acks together afterwards (``_acked``,
  ``_acked_index``, ``_n_acked``, as Faust's ``ack`` does per message), so Faust's commit,
  group membership, assignor and table recovery stay Faust's. Its ``wait_empty`` (what a
  rebalance awaits before it flushes and commits) also waits for the batch in progress, and it
  keeps Faust's ``_read_offset`` and the stall detector's ``stream_inbound_time`` up to date.

Faust's ``Codec._dumps``/``_loads`` (``streams.tables``) are not here: overriding them is how
Faust's documentation says to write a codec.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

READ_COMMITTED = "read_committed"


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka's consumer hands this to its fetcher when it starts, before any fetch.
        consumer._isolation_level = READ_COMMITTED
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    """Faust's consumer, reading committed records only. Faust reads read_uncommitted unless
    its processing guarantee is exactly_once (and offers no setting): records of a
    transaction that a producer of our inputs aborted would be joined into transitions."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


def use_read_committed_consumer(app: faust.App) -> None:
    """Give ``app`` a consumer that reads committed records only (before it is first built)."""
    transport: Any = app.transport  # its Consumer is a class attribute, which Faust lets an app replace
    transport.Consumer = ReadCommittedConsumer


#: What the batch consumer hands the worker: each partition's fetched records (aiokafka's
#: ``ConsumerRecord``: topic, partition, offset, key, value), in offset order, and the monotonic
#: time the fetch returned. The worker answers with the offsets it is done with, per partition
#: ``(tp, first, end)``: ``first`` to ``end`` - 1, everything it processed or passed (holes
#: included), once what they caused is with the producer.
BatchHandler = Callable[[Sequence[tuple[TP, Sequence[Any]]], float], Awaitable[Sequence[tuple[TP, int, int]]]]


class BatchDrainingConsumer(ReadCommittedConsumer):
    """Faust's consumer (committed records only) that hands whole fetched batches to
    ``batch_handler`` instead of one message at a time to the conductor and the streams."""

    batch_handler: BatchHandler | None = None
    batch_topics: frozenset[str] = frozenset()
    """The topics whose batches go to ``batch_handler``; the rest (the tables' changelogs,
    which recovery reads through the conductor) are delivered as Faust delivers them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()

    async def wait_empty(self) -> None:
        """Before a rebalance flushes and commits: the batch in progress is finished first
        (its outputs are with the producer, its acks recorded), as Faust waits for the
        messages its streams hold."""
        await self._batch_idle.wait()
        await super().wait_empty()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run by tests/integration
        handler, topics = self.batch_handler, self.batch_topics
        if handler is None:
            await super()._drain_messages(fetcher)
            return
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        inbound = self.app.monitor.stream_inbound_time
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await self.sleep(0)
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                # As Faust's getmany: the generation the batch belongs to is the one after the
                # fetch (aiokafka's fetcher waits out a reassignment before it returns records,
                # which then come from the new positions). Taken before the fetch, a rebalance
                # during it dropped records of the new assignment that no fetch brings again.
                generation = self.app.consumer_generation_id
                if not self.flow_active:  # a rebalance began since the fetch: as Faust's getmany
                    try:
                        await self.perform_seek()
                    except Exception as exc:  # noqa: BLE001 - as Faust: logged, the loop goes on
                        self.log.warning("exception performing seek when flow not active %s", exc)
                    continue
                handed = time.monotonic()
                batch: list[tuple[TP, Sequence[Any]]] = []
                others: list[tuple[TP, Sequence[Any]]] = []
                for tp, recs in records.items():
                    if recs and (active is None or tp in active or tp in self._buffered_partitions):
                        (batch if tp.topic in topics else others).append((TP(tp.topic, tp.partition), recs))
                if others:  # the tables' changelogs during recovery: Faust's own path, message by message
                    await self._deliver_one_by_one(others, generation)
                if not batch:
                    continue
                self._batch_idle.clear()
                try:
                    for tp, handed_over in batch:
                        self._read_offset[tp] = handed_over[-1].offset
                        inbound[tp] = handed
                    self._ack_ranges(await handler(batch, handed))
                finally:
                    self._batch_idle.set()
                commit_every = self._commit_every
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _deliver_one_by_one(self, records: Sequence[tuple[TP, Sequence[Any]]], generation: int) -> None:
        """What Faust's ``_drain_messages`` does with each message, for topics not batched."""
        callback, to_message, read_offset = self.callback, self._to_message, self._read_offset
        for tp, recs in records:
            for record in recs:
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return
                message = to_message(tp, record)
                r_offset = read_offset[tp]
                if r_offset is None or message.offset >= r_offset:
                    if r_offset and message.offset - r_offset > 1 and self.app.topics.acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, message.offset)
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    read_offset[tp] = message.offset

    def _ack_ranges(self, done: Sequence[tuple[TP, int, int]]) -> None:
        """Record offsets ``first`` to ``end`` - 1 of each partition as acked, as Faust's
        ``ack`` records one message: Faust commits up to the first offset not acked."""
        committed_of, acked_of, index_of = self._committed_offset, self._acked, self._acked_index
        n = 0
        for tp, first, end in done:
            committed = committed_of[tp]
            if committed is not None and first < committed:
                first = committed
            if first >= end:
                continue
            index = index_of[tp]
            fresh = [o for o in range(first, end) if o not in index] if index else list(range(first, end))
            index.update(fresh)
            acked_of[tp].extend(fresh)
            n += len(fresh)
        self._n_acked += n


def use_batch_consumer(app: faust.App, handler: BatchHandler, topics: Iterable[str]) -> None:
    """Give ``app`` the batch-draining consumer (committed records only), handing its fetched
    batches of ``topics`` to ``handler`` (before the consumer is first built)."""
    transport: Any = app.transport
    transport.Consumer = type("BoundBatchDrainingConsumer", (BatchDrainingConsumer,),
                              {"batch_handler": staticmethod(handler), "batch_topics": frozenset(topics)})


def new_aiokafka_consumer(app: faust.App) -> Any:
    """A new aiokafka consumer, as ``app``'s consumer thread builds its own (not started; the
    caller stops it). For checks of what Faust would build."""
    consumer: Any = app.consumer
    return consumer._thread._create_worker_consumer(app.transport)


def isolation_level(client: Any) -> str:
    """The isolation level an aiokafka consumer will fetch with."""
    return client._isolation_level


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """Faust's copy of ``tp``'s committed offset (``None`` while it knows none)."""
    return consumer._committed_offset.get(tp)


async def add_gap(consumer: Any, tp: TP, first: int, last: int) -> None:
    """Tell Faust that offsets ``first`` to ``last`` of ``tp`` are done (processed outside its
    stream), so its commit passes them."""
    await consumer._add_gap(tp, first, last)


def withhold_acks(messages: Iterable[Any]) -> None:
    """Make Faust record no ack for these messages (of events its stream handed over): its
    ``ack`` passes over a message already marked ``acked``, so their offsets stay uncommitted."""
    for message in messages:
        message.acked = True


def is_paused(consumer: Any, tp: TP) -> bool:
    """Whether Faust paused ``tp``'s fetch (recovery, rebalance)."""
    return tp in consumer._paused_partitions


def is_buffered(consumer: Any, tp: TP) -> bool:
    """Whether Faust took ``tp`` out of its fetch for a full stream buffer."""
    return tp in consumer._buffered_partitions


def resume_fetch(consumer: Any, tp: TP) -> None:
    """Put ``tp`` back among the partitions Faust fetches, whatever took it out (a pause, or a
    full stream buffer: the mark is cleared as Faust's ``on_buffer_drop`` clears it)."""
    consumer._buffered_partitions.discard(tp)
    consumer.resume_partitions([tp])


def tune_fetches(app: faust.App, max_wait_s: float, min_bytes: int) -> None:
    """Let the broker hold the worker's fetches for ``min_bytes``, up to ``max_wait_s``. Faust
    builds its aiokafka consumer with neither setting (a fetch answers as soon as one byte is
    there), so under light traffic every message that arrived cost a fetch round trip, a
    hand-over between the consumer's thread and the worker's, and a batch of its own: most of a
    core at 100 events/s. The fetcher reads both values each time it builds a request."""
    consumer: Any = app.consumer
    fetcher = consumer._thread._ensure_consumer()._fetcher
    fetcher._fetch_max_wait_ms = int(max_wait_s * 1000)
    fetcher._fetch_min_bytes = min_bytes
