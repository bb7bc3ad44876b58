"""Kafka plumbing every confluent-kafka component shares: a producer that reports failed
deliveries, and a consumer that validates events and dead-letters the bad ones.

Both keep the at-least-once rule of DESIGN.md: ``EventConsumer.commit()`` first waits for every
dead letter (and the caller for its own output) to be acknowledged, then commits offsets.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from shelfq.contracts.errors import ConfigError, EventError, ShelfqError
from shelfq.contracts.events import Event, decode
from shelfq.contracts.outage import (
    LIBRDKAFKA_NOISE,
    ConnectionNoise,
    Unacknowledged,
    report_client_error,
)
from shelfq.contracts.settings import KAFKA_LOGGER, Settings
from shelfq.contracts.topics import DLQ, EVENT_OF_TOPIC, ITEMS, MODELS

log = logging.getLogger("shelfq.consumer")
#: Commit errors of a consumer that is no longer a member of its group (it rejoins as it polls);
#: _ASSIGNMENT_LOST is librdkafka's own: its session timed out (a broker restart, for one).
REJOIN_CODES = frozenset({KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
                          KafkaError._ASSIGNMENT_LOST})

Key = bytes | str | None
# A broker that is down is said once by the component's BrokerWatch, not 20 times a second.
KAFKA_LOGGER.addFilter(ConnectionNoise(*LIBRDKAFKA_NOISE))


def _key_bytes(key: Key) -> bytes | None:
    return key.encode("utf-8") if isinstance(key, str) else key


#: Delivery errors by which the broker refuses a record batch for its size.
_SIZE_REFUSALS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
#: ... or refuses a record it will not store (a null key on a compacted topic, say).
_RECORD_REFUSALS = _SIZE_REFUSALS | {KafkaError.INVALID_RECORD}
_DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes


class _Refused(NamedTuple):
    """A message the broker refused in a batch: it is tried again alone before it is judged."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Any
    on_delivered: Callable[[Any], None] | None
    on_too_large: Callable[[str], None] | None
    alone: bool  # refused when it was sent alone (so its own fault, not a batch-mate's)
    error: KafkaError


class ReliableProducer:
    """A confluent-kafka producer whose ``flush`` raises if any delivery failed.

    Idempotence is on, so retries never duplicate or reorder a partition's messages. Keys are
    partitioned with murmur2, as the Java clients and aiokafka do, so one user's events land in
    the same partition of every topic whichever client produced them.

    A message refused for its size never crashes the component: the client refuses one over
    ``message.max.bytes`` at ``produce``, the broker one over the topic's ``max.message.bytes``
    in its delivery report. It goes to ``dlq`` with reason ``too_large`` (``refused`` for a
    record the broker will not store, such as a null key on a compacted topic), naming the
    topic and the size, through the first ``DeadLetterWriter`` built on this producer; the
    caller may handle it instead (``produce(on_too_large=...)``). The broker refuses a whole
    batch, so a refused message is first sent again alone (after ``flush`` has delivered
    everything queued before it: it lands after them) and only judged if refused alone.
    A model too large for the ``models`` topic is a configuration error: ``ConfigError``.

    While the broker is away, messages stay queued for longer than ``broker_outage_s`` (the
    client's ``message.timeout.ms``), so a component that waits out an outage loses none: a
    ``flush`` that times out meanwhile raises ``Unacknowledged``, and may be called again.
    """

    def __init__(self, settings: Settings, component: str | None = None, **config: Any) -> None:
        conf = {"enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4", "partitioner": "murmur2_random",
                "message.timeout.ms": int(max(300.0, settings.broker_outage_s + 60.0) * 1000),
                "error_cb": report_client_error}
        conf.update(config)
        full = settings.confluent_config(**conf)
        self._producer = Producer(full)
        self.settings = settings
        #: Who dead letters name as their component (else the first ``DeadLetterWriter``'s).
        self.component = component
        #: Where refused messages go; the first ``DeadLetterWriter`` built on this producer.
        self.dead_letters: Any = None
        self.max_message_bytes = int(full.get("message.max.bytes", _DEFAULT_MESSAGE_MAX_BYTES))
        self._failures: list[str] = []
        self._refused: list[_Refused] = []
        self.delivered = 0
        #: Messages refused for their size (or as records), however they were handled.
        self.refused = 0

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
        on_too_large: Callable[[str], None] | None = None,
    ) -> None:
        """Queue one message; waits for room when the local queue is full instead of failing.

        ``on_delivered(msg)`` is called with the acknowledged message (topic, partition, offset).
        ``on_too_large(detail)`` is called instead of dead-lettering the message itself when it
        is refused for its size (at once, or from ``flush``): to dead-letter what it came from.
        """
        self._produce(topic, value, _key_bytes(key), headers, on_delivered, on_too_large, alone=False)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, headers: Any,
                 on_delivered: Callable[[Any], None] | None, on_too_large: Callable[[str], None] | None,
                 alone: bool) -> None:
        def report(err: KafkaError | None, msg: Any) -> None:
            if err is not None and err.code() in _RECORD_REFUSALS:
                # Judged after the client call that served this report, never inside it.
                self._refused.append(_Refused(msg.topic(), msg.value(), msg.key(), msg.headers(), on_delivered,
                                              on_too_large, alone, err))
                return
            self._on_delivery(err, msg)
            if err is None and on_delivered is not None:
                on_delivered(msg)

        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=report)
                break
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                    raise
                self._refuse(topic, value, key, on_too_large,
                             f"{topic}: the message is {_size(value, key, headers)} bytes, over the producer's "
                             f"message.max.bytes ({self.max_message_bytes})", sized=True)
                return
        self._producer.poll(0)

    def _refuse(self, topic: str, value: bytes | None, key: bytes | None,
                on_too_large: Callable[[str], None] | None, detail: str, sized: bool) -> None:
        """What is done with a message that cannot be sent (``sized``: for its size, else
        refused as a record): see the class docstring."""
        self.refused += 1
        if topic == self.settings.topic(MODELS):
            # The learner's whole output: dropping it would leave the agents on an old model.
            if sized:
                raise ConfigError(f"a model does not fit the models topic: {detail}; raise SHELFQ_MODEL_MAX_BYTES "
                                  "(and run `shelfq topics create` to set the topic's max.message.bytes) or make "
                                  "the network smaller")
            raise ShelfqError(f"the broker refused a model: {detail}")
        if topic == self.settings.topic(DLQ):
            raise ShelfqError(f"a dead letter was refused: {detail}")
        if sized and on_too_large is not None:
            on_too_large(detail)
            return
        if self.dead_letters is None:
            from shelfq.contracts.dlq import DeadLetterWriter

            DeadLetterWriter(self.settings, self.component or "producer", self)  # registers itself
        self.dead_letters.send("too_large" if sized else "refused", topic, value, key=key, detail=detail)

    def _judge_refused(self, deadline: float) -> int:
        """Send each message refused in a batch again alone; dead-letter (or hand to its
        caller) each one refused alone. Returns what is still unacknowledged at the deadline."""
        remaining = 0
        while self._refused and not remaining:
            refused, self._refused = self._refused, []
            for i, r in enumerate(refused):
                try:
                    if r.alone:
                        sized = r.error.code() in _SIZE_REFUSALS
                        self._refuse(r.topic, r.value, r.key, r.on_too_large,
                                     f"{r.topic}: the broker refused the message of {_size(r.value, r.key, r.headers)} "
                                     f"bytes sent alone{' (over the topic max.message.bytes)' if sized else ''}: "
                                     f"{r.error.str()}", sized)
                        continue
                    self._produce(r.topic, r.value, r.key, r.headers, r.on_delivered, r.on_too_large, alone=True)
                    # Delivered before the next is sent again, so no two share a batch.
                    remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
                except BaseException:
                    self._refused[:0] = refused[i + 1:]
                    raise
                if remaining:
                    self._refused[:0] = refused[i + 1:]
                    return remaining
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))  # the dead letters
        return remaining

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports."""
        return self._producer.poll(timeout)

    def probe_broker(self, topic: str, timeout: float = 2.0) -> None:
        """Raises unless the broker answers a metadata request for ``topic`` (``BrokerWatch``)."""
        self._producer.list_topics(topic, timeout=timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued message; raise ``ShelfqError`` if any was not delivered.

        Messages refused for their size are dead-lettered (or handed to their callers) here,
        and those dead letters are waited for too.
        """
        deadline = time.monotonic() + timeout
        remaining = self._producer.flush(timeout)
        if not remaining:
            remaining = self._judge_refused(deadline)
        if remaining:
            raise Unacknowledged(f"{remaining} messages still unacknowledged after {timeout}s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise ShelfqError(f"{len(failures)} deliveries failed, first: {failures[0]}")


def _size(value: bytes | None, key: bytes | None, headers: Any) -> int:
    """The bytes of a message's key, value and headers, as the client counts them (near enough)."""
    size = len(value or b"") + len(key or b"")
    if isinstance(headers, dict):
        headers = list(headers.items())
    for name, header in headers or ():
        size += len(name) + len(header or b"")
    return size


class Received(NamedTuple):
    """One valid event and where it came from. ``event`` is None for an item tombstone."""

    event: Event | None
    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int
    #: What ``timestamp_ms`` is: the broker's append time (``TIMESTAMP_LOG_APPEND_TIME``) on a
    #: topic that stores it, else the producer's (``TIMESTAMP_CREATE_TIME``).
    timestamp_type: int = 0


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
        from shelfq.contracts.dlq import DeadLetterWriter

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
            "error_cb": report_client_error,
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
            decoder = self._decoders.get(msg.topic()) or functools.partial(
                decode, kind=kind, max_bytes=self.settings.max_event_bytes)
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

    def probe_broker(self, topic: str, timeout: float = 2.0) -> None:
        """Raises unless the broker answers a metadata request for ``topic`` (``BrokerWatch``)."""
        self._consumer.list_topics(topic, timeout=timeout)

    def commit_unless_left(self, offsets: dict[tuple[str, int], int] | None = None) -> bool:
        """``commit(offsets)``, unless this consumer has left its group meanwhile, as after an
        outage longer than its session timeout: only polling rejoins it, so retrying the commit
        (``BrokerWatch.wait_out``) would wait for ever. Skipping is safe for at-least-once
        delivery: the events are read again, or a later commit covers them. True when
        committed; other errors are raised."""
        try:
            self.commit(offsets)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in REJOIN_CODES:
                raise
            log.warning("offsets not committed (%s): the consumer rejoins its group as it polls", err.str())
            return False
        return True

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

        from shelfq.contracts.dlq import DeadLetterWriter

        kind = EVENT_OF_TOPIC.get(logical)
        if kind is None:
            raise ConfigError(f"CompactedReader reads JSON event topics, not {logical!r}")
        self.settings, self.logical, self.kind = settings, logical, kind
        self.topic = settings.topic(logical)
        self.dlq = DeadLetterWriter(settings, component, producer)
        self._consumer = Consumer(settings.confluent_config(**{
            "group.id": f"{settings.topic_prefix}{component}-cache",  # required; never committed
            "enable.auto.commit": False, "enable.partition.eof": False, "error_cb": report_client_error}))
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

    def read_to_end(self, timeout: float = 30.0) -> list[Received]:
        """What the topic holds now, up to its end (or what came within ``timeout``): what a
        cache must hold before it serves."""
        from confluent_kafka import TopicPartition

        tps = [TopicPartition(self.topic, p) for p in topic_partitions(self._consumer, self.topic)]
        ends = {tp.partition: self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        out: list[Received] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = {tp.partition: tp.offset for tp in self._consumer.position(tps)}
            if all(at[p] >= end for p, end in ends.items() if end > 0):
                break
            out += self.poll(timeout=0.2, max_messages=5000)
        return out

    def close(self) -> None:
        """Stop reading; dead letters still queued are delivered first."""
        self._consumer.close()
        self.dlq.flush()


def consumed_headers(msg: Message) -> list[tuple[str, bytes | None]] | None:
    """A consumed message's headers, as librdkafka gives them: (key, value) pairs, a value
    bytes or None. confluent-kafka's stub types ``Message.headers()`` with the union a producer
    may pass (a dict, str values), which a consumer never receives."""
    return cast("list[tuple[str, bytes | None]] | None", msg.headers())


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
                    key.decode("utf-8", errors="replace") if key is not None else None, msg.timestamp()[1],
                    msg.timestamp()[0])
