"""Hole filling: owns the order in which the worker processes each input partition's messages
(``streams.sequence``), the offsets Faust left out that it read from the broker, and telling
Faust once they are done.

Each delivered message is checked against the next offset to process (the first since the
assignment: where Faust starts delivering, ``streams.ownership``). A repeat is skipped; before
a message past the next offset, the offsets Faust left out are read from the broker with a
consumer of the worker's own and processed first. Faust commits a partition up to its first
offset not acked and can pass such a hole, so a hole with messages in it is reported to Faust
as done, but only after the flush that handed what they caused to the producer (Faust flushes
the producer before it commits). A hole the broker cannot give raises ``HoleUnreadable``
before anything of the batch is joined.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import faust
from faust.types import TP

from shelfq.streams import faust_internals
from shelfq.streams.metrics import StreamsMetrics
from shelfq.streams.ownership import Ownership
from shelfq.streams.sequence import DeliveryOrder, HoleReader

log = logging.getLogger("shelfq.streams")

#: ``(tp, topic, partition, offset, key, value, handed over)``: a message of an input topic,
#: handed to the worker at monotonic time "handed over" (where emit latency starts).
Message = tuple[TP, str, int, int, bytes | None, bytes | None, float]
#: Takes one message to process: ``(topic, partition, offset, key, value, handed over)``.
Sink = Callable[[str, int, int, bytes | None, bytes | None, float], None]


class HoleFiller:
    """Puts each partition's messages in offset order, reading what Faust left out from the
    broker (``reader``)."""

    def __init__(self, app: faust.App, ownership: Ownership, reader: HoleReader, metrics: StreamsMetrics) -> None:
        self.app = app
        self.ownership = ownership
        self.reader = reader
        self.metrics = metrics
        self.order = DeliveryOrder()
        self._filled: list[tuple[TP, int, int]] = []  # holes processed, to tell Faust about

    def in_order(self, messages: Iterable[Message], sink: Sink) -> None:
        """Hand each message to ``sink`` once, in offset order per partition: repeats skipped,
        the messages of a hole before the one after it. Raises ``HoleUnreadable`` if a hole
        cannot be read."""
        check, next_offset, start_offset = self.order.check, self.order.next_offset, self.ownership.start_offset
        for tp, full_topic, partition, offset, key, value, started in messages:
            expected = next_offset(tp)
            if expected is None:  # the first since the assignment: Faust starts at the committed offset
                expected = start_offset(tp)
            verdict = check(tp, offset, expected)
            if verdict == "repeat":
                self.metrics.out_of_order.labels("repeat").inc()
                continue
            if verdict == "hole":
                assert expected is not None  # a hole is a gap after a known offset
                self._fill(tp, offset, expected, started, sink)
            sink(full_topic, partition, offset, key, value, started)

    def _fill(self, tp: TP, offset: int, begin: int, started: float, sink: Sink) -> None:
        """Faust left out the offsets before ``offset`` (``streams.sequence``): read them from
        the broker and process them first. This blocks the event loop for a fetch: rare, except
        with inputs written in transactions, whose every marker is such a hole."""
        missing = self.reader.read(tp.topic, tp.partition, begin, offset)
        self.metrics.out_of_order.labels("hole").inc()
        if not missing:  # markers, or deleted records: Faust's commit passes them unaided
            log.debug("%s:%d: offsets %d to %d hold no messages", tp.topic, tp.partition, begin, offset - 1)
            return
        log.warning("%s:%d: Faust left out offsets %d to %d; read %d messages of them from the broker",
                    tp.topic, tp.partition, begin, offset - 1, len(missing))
        for m in missing:
            sink(m.topic(), m.partition(), m.offset(), m.key(), m.value(), started)
        self._filled.append((tp, missing[0].offset(), offset))

    async def after_flush(self) -> None:
        """Tell Faust the holes processed are done, so its commit passes them; only now that
        what they caused is with the producer (Faust flushes it before committing)."""
        consumer = self.app.consumer
        filled, self._filled = self._filled, []
        for tp, begin, end in filled:
            if tp.partition in self.ownership.partitions:  # a partition revoked meanwhile starts afresh
                await faust_internals.add_gap(consumer, tp, begin, end - 1)

    def covered(self) -> None:
        """The holes processed are covered otherwise (the batch consumer's acked ranges, which
        need no gap for them: a gap over acked offsets would repeat them in Faust's acked list)."""
        self._filled.clear()

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop what was known of these partitions' read positions: if one comes back, another
        worker may have read on meanwhile, and the group's committed offsets say where."""
        gone = set()
        for tp in tps:
            self.order.forget(tp)
            gone.add(tp.partition)
        self._filled = [f for f in self._filled if f[0].partition not in gone]
