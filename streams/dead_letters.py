"""Dead letters: owns what the worker writes to ``dlq`` and that every letter fits the producer.

A letter carries what could not be used (an input that does not validate, an event the join
judged late or orphaned, an output too large to send), where it came from and why, counted by
reason in ``shelfq_dead_letters_total``. Its value is cut to ``dlq_max_value_bytes``; should the
letter still be over ``max_message_bytes`` (a tiny limit, or JSON escapes that multiply the
value), it is cut shorter, then sent without its value, and dropped (logged) only if even that
does not fit: a dead letter must never stop the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shelfq.contracts.dlq import dead_letter
from shelfq.contracts.events import encode
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import DLQ
from shelfq.streams.limits import message_size
from shelfq.streams.metrics import StreamsMetrics

log = logging.getLogger("shelfq.streams")
COMPONENT = "streams"

#: Queues one message for the next flush: ``(topic, key, value, partition, on_sent)``.
Queue = Callable[[str, bytes | None, bytes | None, int | None, Any], None]


class DeadLetters:
    """Writes dead letters through ``queue`` (the outbox's)."""

    def __init__(self, settings: Settings, max_message_bytes: int, metrics: StreamsMetrics, queue: Queue) -> None:
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self.metrics = metrics
        self.queue = queue
        self.topic = settings.topic(DLQ)

    def send(self, reason: str, detail: str, topic: str, value: bytes | None, key: bytes | None,
             partition: int | None, offset: int | None) -> None:
        """Dead-letter ``value`` (with ``key``) of ``topic`` for ``reason``; ``partition`` and
        ``offset`` say where it was read, where known."""
        self.metrics.dead_letters.labels(reason).inc()
        for cut in (self.settings.dlq_max_value_bytes, self.max_message_bytes // 8, 0):
            record = encode(dead_letter(COMPONENT, reason, topic, value, key=key, partition=partition, offset=offset,
                                        detail=detail, max_value_bytes=min(cut, self.settings.dlq_max_value_bytes)))
            if message_size(key, record) <= self.max_message_bytes:
                self.queue(self.topic, key, record, None, None)
                return
        self.metrics.send_failures.labels(self.topic).inc()
        log.error("a dead letter (%s, %s) is %d bytes even without its value, over max_message_bytes (%d): dropped",
                  reason, topic, message_size(key, record), self.max_message_bytes)
