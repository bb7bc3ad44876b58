"""Kafka plumbing every confluent-kafka component shares: a producer that reports failed
deliveries, and a consumer that validates events and dead-letters the bad ones.

Both keep the at-least-once rule of DESIGN.md: ``EventConsumer.commit()`` first waits for every
dead letter (and the caller for its own output) to be acknowledged, then commits offsets.
"""

from __future__ import annotations

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
        **config: Any,
    ) -> None:
        from contracts.dlq import DeadLetterWriter

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
        self._consumer.subscribe(list(self._kinds))
        self._uncommitted = False

    def poll(self, timeout: float = 1.0, max_messages: int = 500) -> list[Received]:
        """Up to ``max_messages`` valid events; invalid ones are dead-lettered on the way."""
        out: list[Received] = []
        for msg in self._consumer.consume(max_messages, timeout):
            err = msg.error()
            if err is not None:
                if err.fatal() or not err.retriable():
                    raise ShelfqError(f"consumer error on {msg.topic()}: {err.str()}")
                continue
            self._uncommitted = True
            logical, kind = self._kinds[msg.topic()]
            key = msg.key()
            value = msg.value()
            if value is None and logical == ITEMS:
                event: Event | None = None  # tombstone: the item is removed
            else:
                try:
                    event = decode(value, kind, max_bytes=self.settings.max_event_bytes)
                except EventError as exc:
                    self.dlq.send(
                        "invalid",
                        msg.topic(),
                        value,
                        key=key,
                        partition=msg.partition(),
                        offset=msg.offset(),
                        detail=str(exc),
                    )
                    continue
            out.append(
                Received(
                    event,
                    logical,
                    msg.partition(),
                    msg.offset(),
                    key.decode("utf-8", errors="replace") if key is not None else None,
                    msg.timestamp()[1],
                )
            )
        return out

    def commit(self) -> None:
        """Make dead letters durable, then commit the offsets of everything polled so far.

        Call it only once the work done for the polled events is durable too.
        """
        self.dlq.flush()
        if not self._uncommitted:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise
        self._uncommitted = False

    def close(self) -> None:
        """Leave the group without committing; uncommitted events are read again next time."""
        self._consumer.close()

    def __enter__(self) -> EventConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
