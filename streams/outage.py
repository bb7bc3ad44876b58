"""Waiting out a broker outage: owns the worker's broker watch and the hold on the join's
watermarks through the outage and its grace.

The clients reconnect on their own, Faust's producer keeps what it could not send and its
commit waits for the coordinator (``contracts.outage``); the worker asks the broker, off the
event loop, whether it is back, and stops once it was away for longer than
``broker_outage_s``. While the broker cannot say what is unread, every input counts as unread,
so no input goes idle and the wall clock moves no watermark: events sent meanwhile (a
frontend's producer keeps them while the broker is away) arrive with the event times of the
outage, and a watermark that had moved on would take them for late or orphans. The hold lasts
``outage_grace_s`` past the outage: those producers reconnect after the worker does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import faust

from shelfq.contracts.outage import BrokerUnreachable, BrokerWatch, install

log = logging.getLogger("shelfq.streams")


class OutageWatch:
    """The worker's ``BrokerWatch``, checked in the background; ``ping`` asks the broker."""

    def __init__(self, app: faust.App, bootstrap: str, outage_s: float, ping: Callable[[], None]) -> None:
        self.app = app
        self.watch = install(BrokerWatch("streams worker", bootstrap, outage_s, ping))
        self._watching: asyncio.Future | None = None

    def check(self) -> None:
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


class WatermarkHold:
    """Counts every input of the owned partitions as unread (``note_backlog``: the join's)
    during an outage and for ``grace_s`` after it, by the monotonic ``clock``."""

    def __init__(self, note_backlog: Callable[[int, set[str]], None], topics: Iterable[str], grace_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.note_backlog = note_backlog
        self.topics = tuple(topics)
        self.grace_s = grace_s
        self.clock = clock
        self._held_until = 0.0  # until which watermarks stay held after an outage

    def hold(self, partitions: Iterable[int]) -> None:
        """The broker cannot say what is unread: hold from now until ``grace_s`` from now."""
        self._held_until = self.clock() + self.grace_s
        self._hold(partitions)

    def keep_holding(self, partitions: Iterable[int]) -> None:
        """Within ``grace_s`` of an outage, hold the watermarks still (after a backlog read,
        which saw only what has arrived so far)."""
        if self.clock() < self._held_until:
            self._hold(partitions)

    def _hold(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.note_backlog(partition, set(self.topics))
