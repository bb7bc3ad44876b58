"""The one door to Faust's and aiokafka's internals: every private member the worker uses.

Checked against faust-streaming 0.15.3 and aiokafka 0.14.0 (pyproject.toml pins Faust to
0.15.x). Each use below is one the worker cannot do without and no public setting or method
gives; an upgrade that moves one of these members breaks this module only (ruff's private-member
rule is off here and nowhere else in the worker), and the streams tests say so
(tests/unit/test_delivery_guards.py, tests/integration/test_streams.py).

- ``use_read_committed_consumer``: Faust's consumer reads ``read_uncommitted`` unless the
  processing guarantee is ``exactly_once``, and has no setting for it; aiokafka takes the level
  as an argument Faust does not pass on. Without it, records of a transaction a producer of our
  inputs aborted would be joined. Overrides Faust's ``_new_consumer_thread`` and its thread's
  ``_create_worker_consumer``, and sets aiokafka's ``_isolation_level`` before the consumer starts.
- ``committed_offset``: Faust's own copy of the group's committed offset (``_committed_offset``),
  where it starts delivering a partition: the worker's fallback until the broker's answer is in.
- ``add_gap``: Faust commits a partition up to its first offset not acked, and can pass a hole at
  the head of what it acked (faust-streaming #606, open; issue 16 also names #707 and #596).
  Offsets the worker read from the broker itself are handed to Faust's ``_add_gap``, as Faust
  does for offsets its own stream skips, so its commit goes on past them.
- ``is_paused``, ``is_buffered``, ``resume_fetch``: the stall guard (``streams.stalls``). Faust
  takes a partition whose stream buffer filled out of its fetch (``_buffered_partitions``) and
  puts it back when the buffer drains, and can miss putting it back across a rebalance, so the
  partition delivers nothing. The guard resumes its fetch and clears that mark, as Faust's
  ``on_buffer_drop`` does, and reads both sets for its log line.
- ``tune_fetches``: Faust builds aiokafka's consumer without ``fetch_min_bytes`` and
  ``fetch_max_wait_ms``; they are set on its fetcher (``_thread``, ``_ensure_consumer``,
  ``_fetcher``), which reads both each time it builds a request.

Faust's ``Codec._dumps``/``_loads`` (``streams.app``) are not here: overriding them is how
Faust's documentation says to write a codec.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

READ_COMMITTED = "read_committed"


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka's consumer hands this to its fetcher when it starts, before any fetch.
        consumer._isolation_level = READ_COMMITTED
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    """Faust's consumer, reading committed records only. Faust reads read_uncommitted unless
    its processing guarantee is exactly_once (and offers no setting): records of a
    transaction that a producer of our inputs aborted would be joined into transitions."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


def use_read_committed_consumer(app: faust.App) -> None:
    """Give ``app`` a consumer that reads committed records only (before it is first built)."""
    app.transport.Consumer = ReadCommittedConsumer


def new_aiokafka_consumer(app: faust.App) -> Any:
    """A new aiokafka consumer, as ``app``'s consumer thread builds its own (not started; the
    caller stops it). For checks of what Faust would build."""
    return app.consumer._thread._create_worker_consumer(app.transport)


def isolation_level(client: Any) -> str:
    """The isolation level an aiokafka consumer will fetch with."""
    return client._isolation_level


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """Faust's copy of ``tp``'s committed offset (``None`` while it knows none)."""
    return consumer._committed_offset.get(tp)


async def add_gap(consumer: Any, tp: TP, first: int, last: int) -> None:
    """Tell Faust that offsets ``first`` to ``last`` of ``tp`` are done (processed outside its
    stream), so its commit passes them."""
    await consumer._add_gap(tp, first, last)


def is_paused(consumer: Any, tp: TP) -> bool:
    """Whether Faust paused ``tp``'s fetch (recovery, rebalance)."""
    return tp in consumer._paused_partitions


def is_buffered(consumer: Any, tp: TP) -> bool:
    """Whether Faust took ``tp`` out of its fetch for a full stream buffer."""
    return tp in consumer._buffered_partitions


def resume_fetch(consumer: Any, tp: TP) -> None:
    """Put ``tp`` back among the partitions Faust fetches, whatever took it out (a pause, or a
    full stream buffer: the mark is cleared as Faust's ``on_buffer_drop`` clears it)."""
    consumer._buffered_partitions.discard(tp)
    consumer.resume_partitions([tp])


def tune_fetches(app: faust.App, max_wait_s: float, min_bytes: int) -> None:
    """Let the broker hold the worker's fetches for ``min_bytes``, up to ``max_wait_s``. Faust
    builds its aiokafka consumer with neither setting (a fetch answers as soon as one byte is
    there), so under light traffic every message that arrived cost a fetch round trip, a
    hand-over between the consumer's thread and the worker's, and a batch of its own: most of a
    core at 100 events/s. The fetcher reads both values each time it builds a request."""
    fetcher = app.consumer._thread._ensure_consumer()._fetcher
    fetcher._fetch_max_wait_ms = int(max_wait_s * 1000)
    fetcher._fetch_min_bytes = min_bytes
