"""The streams worker's stall guard: what it asks of Faust's consumer, and what it forgets.

Faust's consumer is replaced by a recorder: what is tested is the worker's decision and the
calls it makes, not Kafka's behaviour (tests/integration/test_streams.py runs real workers)."""

from __future__ import annotations

import asyncio

from faust.types import TP

from contracts.settings import Settings
from streams.app import STALL_AFTER_S, create_app
from streams.config import StreamsConfig


class RecordingConsumer:
    def __init__(self, fail_seek: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_seek = fail_seek
        self._paused_partitions: set = set()
        self._buffered_partitions: set = set()

    def resume_partitions(self, tps: list) -> None:
        self.calls.append(("resume", tuple(tps)))

    async def seek_wait(self, offsets: dict) -> None:
        if self.fail_seek:
            raise RuntimeError("partition not assigned")
        self.calls.append(("seek", dict(offsets)))


def worker_with(consumer: RecordingConsumer):
    app, worker = create_app(Settings.from_env(topic_prefix="stalls."), StreamsConfig())
    app.consumer = consumer
    return worker


def test_a_stalled_partition_is_resumed_then_sought_back_to_its_first_unprocessed_offset() -> None:
    consumer = RecordingConsumer()
    worker = worker_with(consumer)
    tp = TP("stalls.impressions", 2)

    async def checks() -> None:
        for now in (0.0, STALL_AFTER_S, 2 * STALL_AFTER_S):
            await worker._unstall(tp, 7, worker._stalls.check(tp, 7, now), now)

    asyncio.run(checks())
    assert consumer.calls == [("resume", (tp,)), ("seek", {tp: 7})]
    assert worker.metrics.stalls.labels("seek")._value.get() == 1


def test_a_failed_seek_is_logged_and_the_worker_goes_on(caplog) -> None:
    worker = worker_with(RecordingConsumer(fail_seek=True))
    asyncio.run(worker._unstall(TP("stalls.feedback", 0), 3, "seek", 30.0))
    assert "could not seek stalls.feedback:0 to 3" in caplog.text


def test_a_revoked_partition_forgets_its_read_position() -> None:
    worker = worker_with(RecordingConsumer())
    worker.partitions = {0, 1}
    kept, revoked = TP("stalls.slates", 0), TP("stalls.slates", 1)
    worker._next_offset.update({kept: 5, revoked: 9})
    worker._stalls.check(revoked, 9, 0.0)
    worker.on_revoked({1})
    assert worker._next_offset == {kept: 5} and worker._stalls.stalled_s(revoked, 100.0) == 0.0
