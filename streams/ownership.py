"""Rebalance bookkeeping: which input partitions this worker owns, which assignment is the
current one, and where Faust starts delivering each partition of it.

Every change of the assignment (taken up after recovery, or revoked) counts as a new
generation, so a read of the broker begun under one assignment can tell, when its answer comes,
that it is stale and must not be kept. Where Faust starts delivering a partition is the group's
committed offset as the broker had it at the assignment: Faust's own copy can still be empty
when the first messages arrive. That offset is read in the background once the assignment's
recovery completed (awaiting the broker inside Faust's recovery left partitions without a
committed offset undelivered until a seek), and the worker processes nothing of an assignment
before the answer is in (``wait_start_offsets``): taking the first offset delivered for the
start lost every message before it when Faust's first delivery after a restart began past the
committed offset (issue 14: a short chaos run lost 282 transitions that way, with lag 0).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import faust
from faust.types import TP

from shelfq.streams import faust_internals

log = logging.getLogger("shelfq.streams")


class Ownership:
    """The partitions owned, the assignment's generation, and its start offsets.

    ``committed_offsets`` reads the group's committed offsets of the input topics from the
    broker (blocking: it runs in an executor thread)."""

    def __init__(self, app: faust.App, committed_offsets: Callable[[], dict[TP, int]]) -> None:
        self.app = app
        self.committed_offsets = committed_offsets
        self.partitions: set[int] = set()
        #: Counts assignment changes, so a read of the broker can tell it is stale.
        self.generation = 0
        #: The group's committed offsets at the assignment (``None`` until the broker answered).
        self.start_offsets: dict[TP, int] | None = None

    def assign(self, partitions: set[int]) -> None:
        """Own exactly ``partitions`` from now on."""
        self.generation += 1
        self.partitions = partitions
        self.start_offsets = None  # the assignment changed: read the committed offsets again

    def revoke(self, partitions: set[int]) -> None:
        """Own ``partitions`` no more."""
        self.generation += 1
        self.start_offsets = None
        self.partitions -= partitions

    def learn_start_offsets(self) -> asyncio.Future:
        """Read the assignment's start offsets in the background (off the event loop); an
        answer that comes after the assignment changed again is dropped."""
        return asyncio.ensure_future(self._read_start_offsets(self.generation))

    async def wait_start_offsets(self, retry_s: float = 1.0) -> None:
        """Return once the current assignment's start offsets are known, reading them from the
        broker (again every ``retry_s`` while it does not answer, or its answer is stale)."""
        while self.start_offsets is None:
            if not await self._read_start_offsets(self.generation):
                await asyncio.sleep(retry_s)

    async def _read_start_offsets(self, generation: int) -> bool:
        """Read them for assignment ``generation``; whether they are known now."""
        try:
            starts = await asyncio.get_running_loop().run_in_executor(None, self.committed_offsets)
        except Exception as exc:  # noqa: BLE001 - the broker may be away: asked again before processing
            log.warning("could not read the committed offsets: %s", exc)
            return False
        if generation == self.generation and self.start_offsets is None:
            self.start_offsets = starts
            log.info("committed offsets at the assignment: %s",
                     {f"{tp.topic}:{tp.partition}": offset for tp, offset in sorted(starts.items())})
        return self.start_offsets is not None

    def start_offset(self, tp: TP) -> int | None:
        """Where Faust starts delivering ``tp`` after the assignment: the group's committed
        offset as the broker had it at the assignment (Faust's own copy can still be empty when
        the first messages arrive, and the worker waits for the broker's before it processes;
        ``wait_start_offsets``); ``None`` if neither knows."""
        if self.start_offsets is not None:
            return self.start_offsets.get(tp, 0)
        return faust_internals.committed_offset(self.app.consumer, tp)
