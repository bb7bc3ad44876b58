"""Kafka plumbing every confluent-kafka component shares: a producer that reports failed
deliveries, and a consumer that validates events and dead-letters the bad ones.

Both keep the at-least-once rule of DESIGN.md: ``EventConsumer.commit()`` first waits for every
dead letter (and the caller for its own output) to be acknowledged, then commits offsets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from contracts.errors import ConfigError, EventError, ShelfqError
from contracts.events import Event, decode
from contracts.settings import Settings
from contracts.topics import DLQ, EVENT_OF_TOPIC, ITEMS

Key = bytes | str | None


def _key_bytes(key: Key) -> bytes | None:
    return key.encode("utf-8") if isinstance(key, str) else key


class ReliableProducer:
    """A confluent-kafka producer whose ``flush`` raises if any delivery failed.

    Idempotence is on, so retries never duplicate or reorder a partition's messages. Keys are
    partitioned with murmur2, as the Java clients and aiokafka do, so one user's events land in
    the same partition of every topic whichever client produced them.
    """

    def __init__(self, settings: Settings, **config: Any) -> None:
        conf = {"enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4", "partitioner": "murmur2_random"}
        conf.update(config)
        self._producer = Producer(settings.confluent_config(**conf))
        self._failures: list[str] = []
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")
        else:
            self.delivered += 1

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: Key = None,
        headers: Any = None,
        on_delivered: Callable[[Any], None] | None = None,
    ) -> None:
        """Queue one message; waits for room when the local queue is full instead of failing.

        ``on_delivered(msg)`` is called with the acknowledged message (topic, partition, offset).
        """
        def report_and_notify(err: KafkaError | None, msg: Any) -> None:
            self._on_delivery(err, msg)
            if err is None and on_delivered is not None:
                on_delivered(msg)

        callback = self._on_delivery if on_delivered is None else report_and_notify

        while True:
            try:
                self._producer.produce(topic, value, _key_bytes(key), headers=headers, on_delivery=callback)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports."""
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued message; raise ``ShelfqError`` if any was not delivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise ShelfqError(f"{remaining} messages still unacknowledged after {timeout}s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise ShelfqError(f"{len(failures)} deliveries failed, first: {failures[0]}")


class Received(NamedTuple):
    """One valid event and where it came from. ``event`` is None for an item tombstone."""

    event: Event | None
    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int


class EventConsumer:
    """Consumes logical topics, decodes each message into its event type, and sends what does
    not validate to ``dlq`` with the reason, so callers only ever see valid events.

    Offsets are committed only by ``commit()``, which first makes the dead letters durable.
    """

    def __init__(
        self,
        settings: Settings,
        component: str,
        group_id: str,
        topics: Sequence[str],
        *,
        offset_reset: str = "earliest",
        producer: ReliableProducer | None = None,
        on_assign: Callable[[list[Any]], None] | None = None,
        decoders: dict[str, Callable[[bytes | None], Any]] | None = None,
        **config: Any,
    ) -> None:
        """``on_assign(partitions)`` may set each TopicPartition's ``offset`` before reading
        starts (a checkpoint that is ahead of the committed offsets, for instance).
        ``decoders`` replaces the full decode of a logical topic with a reader's own (a view
        that raises ``EventError`` the same way)."""
        from contracts.dlq import DeadLetterWriter

        self._decoders = {settings.topic(t): d for t, d in (decoders or {}).items()}
        self._kinds: dict[str, tuple[str, type[Event]]] = {}
        for logical in topics:
            kind = EVENT_OF_TOPIC.get(logical)
            if kind is None or logical == DLQ:
                raise ConfigError(f"EventConsumer reads JSON event topics, not {logical!r}")
            self._kinds[settings.topic(logical)] = (logical, kind)
        self.settings = settings
        self.dlq = DeadLetterWriter(settings, component, producer)
        conf = {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": offset_reset,
            "enable.partition.eof": False,
        }
        conf.update(config)
        self._consumer = Consumer(settings.confluent_config(**conf))
        if on_assign is None:
            self._consumer.subscribe(list(self._kinds))
        else:
            def assign(consumer: Consumer, partitions: list[Any]) -> None:
                on_assign(partitions)
                consumer.assign(partitions)

            self._consumer.subscribe(list(self._kinds), on_assign=assign)
        self._uncommitted = False
        #: Next offset per (topic, partition) of every message polled, valid or dead-lettered.
        self.consumed: dict[tuple[str, int], int] = {}

    def poll(self, timeout: float = 1.0, max_messages: int = 500) -> list[Received]:
        """Up to ``max_messages`` valid events; invalid ones are dead-lettered on the way."""
        out: list[Received] = []
        for msg in _consume(self._consumer, max_messages, timeout):
            self._uncommitted = True
            self.consumed[(msg.topic(), msg.partition())] = msg.offset() + 1
            logical, kind = self._kinds[msg.topic()]
            decoder = self._decoders.get(msg.topic()) or (
                lambda value, kind=kind: decode(value, kind, max_bytes=self.settings.max_event_bytes))
            received = _receive(msg, logical, decoder, self.dlq, tombstones=logical == ITEMS)
            if received is not None:
                out.append(received)
        return out

    def commit(self, offsets: dict[tuple[str, int], int] | None = None) -> None:
        """Make dead letters durable, then commit the offsets of everything polled so far, or
        exactly ``offsets`` ((topic, partition) -> next offset: what a caller made durable
        while this consumer may have read further ahead).

        Call it only once the work done for those events is durable too.
        """
        from confluent_kafka import TopicPartition

        self.dlq.flush()
        if offsets is not None:
            if offsets:
                self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                      asynchronous=False)
            return
        if not self._uncommitted:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise
        self._uncommitted = False

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages not yet consumed, per assigned (topic, partition), from the consumer's
        cached high watermarks (no broker round trip)."""
        lags: dict[tuple[str, int], int] = {}
        assigned = self._consumer.assignment()
        for tp in self._consumer.position(assigned) if assigned else []:
            _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - max(tp.offset, 0))
        return lags

    def close(self) -> None:
        """Leave the group without committing; uncommitted events are read again next time."""
        self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def topic_partitions(client: Any, topic: str, timeout: float = 10.0) -> list[int]:
    """The partitions of ``topic``, asked of the broker through ``client`` (a consumer or an
    admin client). A topic created a moment ago may be unknown to the broker's metadata or
    leaderless for a while (UNKNOWN_TOPIC_OR_PART, LEADER_NOT_AVAILABLE): ask again for up to
    ``timeout`` seconds before saying it is not there."""
    deadline = time.monotonic() + timeout
    while True:
        meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return sorted(meta.partitions)
        if time.monotonic() >= deadline:
            raise ShelfqError(f"topic {topic} is not available: {getattr(meta, 'error', None) or 'missing'} "
                              "(run `shelfq topics create`)")
        time.sleep(0.2)


class CompactedReader:
    """Reads every partition of a compacted topic (``items``, ``user-state``) from the
    beginning, as a cache loader does: no consumer group, nothing committed. Invalid values
    are dead-lettered like ``EventConsumer`` does; tombstones come back with ``event=None``."""

    def __init__(self, settings: Settings, component: str, logical: str,
                 producer: ReliableProducer | None = None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from contracts.dlq import DeadLetterWriter

        kind = EVENT_OF_TOPIC.get(logical)
        if kind is None:
            raise ConfigError(f"CompactedReader reads JSON event topics, not {logical!r}")
        self.settings, self.logical, self.kind = settings, logical, kind
        self.topic = settings.topic(logical)
        self.dlq = DeadLetterWriter(settings, component, producer)
        self._consumer = Consumer(settings.confluent_config(**{
            "group.id": f"{settings.topic_prefix}{component}-cache",  # required; never committed
            "enable.auto.commit": False, "enable.partition.eof": False}))
        partitions = topic_partitions(self._consumer, self.topic)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])

    def poll(self, timeout: float = 0.0, max_messages: int = 1000) -> list[Received]:
        out: list[Received] = []
        for msg in _consume(self._consumer, max_messages, timeout):
            received = _receive(msg, self.logical, self._decode, self.dlq, tombstones=True)
            if received is not None:
                out.append(received)
        return out

    def _decode(self, value: bytes | None) -> Event:
        return decode(value, self.kind, max_bytes=self.settings.max_event_bytes)

    def close(self) -> None:
        """Stop reading; dead letters still queued are delivered first."""
        self._consumer.close()
        self.dlq.flush()


def _consume(consumer: Consumer, max_messages: int, timeout: float) -> list[Any]:
    """Messages of one consume call; retriable errors are skipped, the others raised."""
    out = []
    for msg in consumer.consume(max_messages, timeout):
        err = msg.error()
        if err is None:
            out.append(msg)
        elif err.fatal() or not err.retriable():
            raise ShelfqError(f"consumer error on {msg.topic()}: {err.str()}")
    return out


def _receive(msg: Any, logical: str, decoder: Callable[[bytes | None], Any], dlq: Any,
             tombstones: bool) -> Received | None:
    """The valid event of ``msg`` (None for a tombstone where tombstones mean removal), or
    None after dead-lettering it with the decoder's reason."""
    key, value = msg.key(), msg.value()
    event: Event | None = None
    if value is not None or not tombstones:
        try:
            event = decoder(value)
        except EventError as exc:
            dlq.send("invalid", msg.topic(), value, key=key, partition=msg.partition(), offset=msg.offset(),
                     detail=str(exc))
            return None
    return Received(event, logical, msg.partition(), msg.offset(),
                    key.decode("utf-8", errors="replace") if key is not None else None, msg.timestamp()[1])
