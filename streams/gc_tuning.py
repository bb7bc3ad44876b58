"""The streams worker's garbage-collector settings.

The join allocates a few dozen objects per event (decoded events, records, transitions and
their states) and holds hundreds of thousands of them live (open records, transitions awaiting
acks). With CPython's default thresholds (700, 10, 10) a young collection runs every few dozen
events and the older ones walk those live objects again and again: measured on the bench's
events, about a third of the join's CPU time (46 µs an event against 32 with collection off,
``shelfq bench join --core-only``). The join's records hold no reference cycles (what they drop
is freed by reference counting), so collecting less often costs little memory: young
collections every 50,000 allocations, the older generations as rarely again. What the worker
imported and built at startup is frozen (``gc.freeze``): it lives as long as the process, and
no collection needs to walk it.

>>> before = gc.get_threshold()  # a worker run in this process before may have set its own
>>> with worker_gc():
...     gc.get_threshold() == WORKER_GC_THRESHOLDS
True
>>> gc.get_threshold() == before
True
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

WORKER_GC_THRESHOLDS = (50_000, 20, 100)


def tune_worker_gc() -> None:
    """For the worker process, once it has started: freeze what exists, collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


@contextmanager
def worker_gc() -> Iterator[None]:
    """The worker's thresholds inside the block (for measuring the join as the worker runs it)."""
    before = gc.get_threshold()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
