"""Backlog and stall recovery: owns what the join is told of unread input, and getting a
partition that delivers nothing despite unread messages going again.

Every tick the worker reads the broker's last stable offsets against the next offset it will
process (or, before anything was processed since the assignment, the group's committed offset:
where Faust starts delivering), and tells the join which inputs of each owned partition have
unread messages: those hold its watermark back (docs/streams.md, "Time"). An answer that comes
after the assignment changed is dropped; a failed read holds every watermark (``streams.outage``).

A position that stays put while the log end is ahead may face only transaction markers (a
producer of our inputs that uses transactions ends each one with a marker, which takes an
offset but is never delivered): the worker looks at what lies between, with a reader of its
own, again only when the position or the log end moves; if only markers, the input is caught
up and free to go idle. A partition with unread messages that Faust has not delivered from for
a while is resumed, then sought back to the first offset not processed (``streams.stalls``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust
from faust.types import TP

from shelfq.contracts.outage import BrokerWatch
from shelfq.streams import faust_internals
from shelfq.streams.metrics import StreamsMetrics
from shelfq.streams.outage import WatermarkHold
from shelfq.streams.ownership import Ownership
from shelfq.streams.sequence import DeliveryOrder, HoleReader
from shelfq.streams.stalls import StallWatch

log = logging.getLogger("shelfq.streams")
STALL_AFTER_S = 15.0
BACKLOG_WARN_EVERY_S = 30.0  # a failing read of the offsets is said this often at most


class StallRecovery:
    """Resumes, then seeks back, a partition of ``app``'s consumer that delivers nothing
    despite unread messages, ``after_s`` apart."""

    def __init__(self, app: faust.App, metrics: StreamsMetrics, after_s: float = STALL_AFTER_S) -> None:
        self.app = app
        self.metrics = metrics
        self.watch = StallWatch(after_s)

    async def check(self, tp: TP, position: int, now: float) -> None:
        """``tp`` has unread messages and next processes ``position``, at monotonic ``now``:
        resume its fetch, or seek it back, if it has delivered nothing for long enough."""
        await self._unstall(tp, position, self.watch.check(tp, position, now), now)

    async def _unstall(self, tp: TP, position: int, action: str | None, now: float) -> None:
        """Get a partition that delivers nothing despite unread messages going again
        (``streams.stalls``): resume its fetch, and if that did not help, seek back to the
        first offset not processed."""
        if action is None:
            return
        consumer = self.app.consumer
        log.warning("no message from %s:%d for %.0fs though offset %d is unread (paused=%s, buffered=%s); %s",
                    tp.topic, tp.partition, self.watch.stalled_s(tp, now), position,
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

    def forget(self, tp: TP) -> None:
        """``tp`` has nothing unread (or is no longer ours)."""
        self.watch.forget(tp)


class Backlog:
    """Tells the join (``note_backlog``) which inputs have unread messages.

    ``end_offsets(partitions)`` and ``committed_offsets()`` read the broker (blocking: they
    run in executor threads); ``probe`` reads a partition's unread tail."""

    def __init__(self, logical: Mapping[str, str], ownership: Ownership, order: DeliveryOrder,
                 end_offsets: Callable[[Iterable[int]], dict[TP, int]], probe: HoleReader, stalls: StallRecovery,
                 hold: WatermarkHold, watch: BrokerWatch, note_backlog: Callable[[int, set[str]], None],
                 metrics: StreamsMetrics) -> None:
        self.logical = logical
        self.ownership = ownership
        self.order = order
        self.end_offsets = end_offsets
        self.probe = probe
        self.stalls = stalls
        self.hold = hold
        self.watch = watch
        self.note_backlog = note_backlog
        self.metrics = metrics
        self._probed: dict[TP, tuple[int, int, bool]] = {}  # position, end: whether messages lie between
        self._warned = 0.0

    async def refresh(self) -> None:
        """Tell the join which inputs have unread messages, from the broker's log-end offsets
        against the next offset processed (or, before anything was processed since the
        assignment, the group's committed offset: where Faust starts delivering).

        Faust's own view cannot answer this: its fetch position counts messages queued inside
        Faust as read, a paused partition has no fresh highwater, and asking its consumer for
        a position can block the consumer thread. The admin requests run off the event loop."""
        loop = asyncio.get_running_loop()
        ownership = self.ownership
        assignment = ownership.generation
        try:
            starts = ownership.start_offsets
            if starts is None:
                starts = await loop.run_in_executor(None, ownership.committed_offsets)
            ends = await loop.run_in_executor(None, self.end_offsets, ownership.partitions)
        except Exception as exc:  # noqa: BLE001 - the backlog is unknown until the broker answers
            self.watch.lost(str(exc))
            self.hold.hold(ownership.partitions)
            now = time.monotonic()
            if now - self._warned >= BACKLOG_WARN_EVERY_S:  # every tick while the broker is away
                self._warned = now
                log.warning("could not read offsets for the watermark: %s", exc)
            return
        if assignment != ownership.generation:
            return  # partitions changed hands while the broker answered: ask again next tick
        ownership.start_offsets = starts
        now = time.monotonic()
        lags: dict[tuple[str, int], int] = {}
        for partition in sorted(ownership.partitions):
            lagging = set()
            for full, topic in self.logical.items():
                tp = TP(full, partition)
                position = self.order.next_offset(tp)
                if position is None:
                    position = starts.get(tp, 0)
                end = ends.get(tp, 0)
                lags[(full, partition)] = max(0, end - position)
                if end <= position:
                    self.stalls.forget(tp)
                    continue
                holds = await self._holds_messages(tp, position, end)
                if assignment != ownership.generation:
                    return  # partitions changed hands while the broker answered
                if holds:
                    lagging.add(topic)
                    await self.stalls.check(tp, position, now)
            self.note_backlog(partition, lagging)
        self.metrics.consumer.set_lag(lags)

    async def _holds_messages(self, tp: TP, position: int, end: int) -> bool:
        """Whether offsets ``position`` to ``end`` - 1 hold messages. They do while they are
        being read; a position that stays put may face only transaction markers (a producer of
        our inputs that uses transactions ends each one with a marker, which takes an offset
        but is never delivered): then the input is caught up, and must be free to go idle."""
        if not self.stalls.watch.unmoved(tp, position):
            return True  # it moved since the last look: being read
        known = self._probed.get(tp)
        if known is None or known[:2] != (position, end):
            loop = asyncio.get_running_loop()
            found: list[Any] | bool
            try:
                found = await loop.run_in_executor(None, self.probe.read, tp.topic, tp.partition, position, end)
            except Exception as exc:  # noqa: BLE001 - assume there are, until position or end move
                log.warning("could not look at %s:%d from offset %d: %s", tp.topic, tp.partition, position, exc)
                found = True
            known = self._probed[tp] = (position, end, bool(found))
        return known[2]

    def forget(self, tps: Iterable[TP]) -> None:
        """These partitions are no longer ours: forget their stall clocks and what was seen of
        their tails."""
        for tp in tps:
            self.stalls.forget(tp)
            self._probed.pop(tp, None)
