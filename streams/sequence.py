"""Processing each input partition's messages once and in offset order, whatever Faust delivers.

Our input topics are not compacted, so a message delivered at offset 12 when 10 is the next to
process means Faust left out 10 and 11. It can: its stream drops a message stamped with an
older consumer generation or delivered while flow control is off, and a rebalance can cancel a
message's hand-over to the stream after it was marked read. A restarted worker was seen to leave
out an offset right after its first assignment. Processing on from 12 would lose 10 and 11, and
Faust's commit can pass a missing offset at the head of what it acked.

``DeliveryOrder.check`` says what to do with each delivered offset:

- ``"process"``: the next one (the first since the partition was assigned is the committed
  offset, which the caller passes as ``start``);
- ``"repeat"``: already processed: skip it;
- ``"hole"``: offsets before it were left out: read them from the broker (``HoleReader``) and
  process them first, then this one. A hole can hold nothing (transaction markers, records
  deleted by retention); then there is nothing to process.

>>> order = DeliveryOrder()
>>> [order.check("tp", offset, start=10) for offset in (10, 11, 14, 13, 15)]
['process', 'process', 'hole', 'repeat', 'process']
>>> order.next_offset("tp")
16
>>> order.check("other", 3, start=2)   # left out right after the assignment: offset 2
'hole'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaException, TopicPartition

from shelfq.contracts.errors import ShelfqError

Verdict = Literal["process", "repeat", "hole"]


class DeliveryOrder:
    """Per partition: the next offset to process."""

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}

    def check(self, tp: Hashable, offset: int, start: int | None = None) -> Verdict:
        """What to do with the message at ``offset`` of ``tp``, whose processing began at
        ``start`` (if known); all but "repeat" move past it (after a "hole", the caller
        processes the missing offsets before this one)."""
        expected = self._next.get(tp, start)
        if expected is not None and offset < expected:
            return "repeat"
        self._next[tp] = offset + 1
        return "hole" if expected is not None and offset > expected else "process"

    def next_offset(self, tp: Hashable) -> int | None:
        """The next offset to process (``None`` before the first message since assignment)."""
        return self._next.get(tp)

    def forget(self, tp: Hashable) -> None:
        """``tp`` was revoked: if it comes back, Faust starts again from the committed offset."""
        self._next.pop(tp, None)


class HoleUnreadable(ShelfqError):
    """The broker did not give the offsets of a hole in time: the worker stops rather than pass
    them (its restart replays from the committed offsets)."""


class HoleReader:
    """Reads a range of offsets of one partition with a consumer of its own: assigned, never
    subscribed, so it joins no group and commits nothing."""

    def __init__(self, config: dict[str, Any], timeout_s: float = 10.0) -> None:
        # Committed records only, as the worker's Faust consumer reads them
        # (streams.faust_internals.ReadCommittedConsumer): records of an aborted transaction must
        # never be joined, and the two must agree, or a hole would be filled with what Faust skips.
        self.config = {**config, "enable.auto.commit": False, "auto.offset.reset": "earliest",
                       "isolation.level": "read_committed", "fetch.wait.max.ms": 10}
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._lock = threading.Lock()  # reads may run in executor threads; close comes from the loop

    def read(self, topic: str, partition: int, begin: int, end: int) -> list[Any]:
        """The messages at offsets ``begin`` to ``end`` - 1 (fewer where the log holds none:
        markers, or records deleted by retention)."""
        try:
            with self._lock:
                if self._consumer is None:
                    self._consumer = Consumer(self.config)
                return self._read(self._consumer, topic, partition, begin, end)
        except KafkaException as exc:
            raise HoleUnreadable(f"{topic}:{partition}: reading offsets {begin} to {end - 1} failed: {exc}") from exc

    def _read(self, consumer: Consumer, topic: str, partition: int, begin: int, end: int) -> list[Any]:
        consumer.assign([TopicPartition(topic, partition, begin)])
        found: list[Any] = []
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                msg = consumer.poll(0.2)
                if msg is not None and msg.error() is None:
                    if (msg.offset() or 0) >= end:  # a message read has an offset
                        return found
                    found.append(msg)
                # Markers and deleted records move the position without a message.
                position = consumer.position([TopicPartition(topic, partition)])[0].offset
                if position >= end:
                    return found
                if time.monotonic() > deadline:
                    raise HoleUnreadable(f"{topic}:{partition}: offsets {begin} to {end - 1} not readable "
                                         f"within {self.timeout_s:g}s (position {position})")
        finally:
            consumer.unassign()

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
