"""Decoding: owns turning the raw messages of the input topics into the events of a batch, and
what becomes of one that does not validate.

Each message is decoded and validated in one pass (``contracts.events.decode``, bounded by
``max_event_bytes``) into the batch, which keeps where each event came from (its partition,
offset and the moment it was handed over, where emit latency starts) and how many messages of
each topic were consumed, valid or not. An invalid one is dead-lettered at once, with its
offset, and counted as the ``invalid`` outcome of its topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from shelfq.contracts.errors import EventError
from shelfq.contracts.events import Event, decode
from shelfq.contracts.topics import EVENT_OF_TOPIC
from shelfq.streams.dead_letters import DeadLetters
from shelfq.streams.join import INPUTS
from shelfq.streams.metrics import StreamsMetrics


class Batch:
    """A batch's decoded events, in processing order, with where each came from."""

    __slots__ = ("events", "origins", "counts")

    def __init__(self) -> None:
        self.events: list[tuple[int, str, Any]] = []
        self.origins: list[tuple[int, int, float]] = []  # partition, offset, handed over (monotonic)
        self.counts = dict.fromkeys(INPUTS, 0)  # messages consumed by topic, valid or not


class Decoder:
    """Decodes messages of the input topics (``logical``: full topic name to input name)."""

    def __init__(self, logical: Mapping[str, str], max_event_bytes: int, dead_letters: DeadLetters,
                 metrics: StreamsMetrics) -> None:
        self.logical = logical
        self.max_event_bytes = max_event_bytes
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._input_counters = {t: metrics.inputs.labels(t) for t in INPUTS}
        self._kinds = {t: cast(type[Event], EVENT_OF_TOPIC[t]) for t in INPUTS}  # every input has its event

    def decode(self, batch: Batch, full_topic: str, partition: int, offset: int, key: bytes | None,
               value: bytes | None, started: float) -> None:
        """Decode one message into ``batch``; an invalid one is dead-lettered at once."""
        topic = self.logical[full_topic]
        batch.counts[topic] += 1
        try:
            parsed = decode(value, self._kinds[topic], max_bytes=self.max_event_bytes)
        except EventError as exc:
            self.dead_letters.send("invalid", str(exc), full_topic, value, key, partition, offset)
            self.metrics.events.labels(topic, "invalid").inc()
            return
        batch.events.append((partition, topic, parsed))
        batch.origins.append((partition, offset, started))

    def count(self, batch: Batch) -> None:
        """Count the batch's messages as consumed, by topic."""
        for topic, n in batch.counts.items():
            if n:
                self._input_counters[topic].inc(n)
