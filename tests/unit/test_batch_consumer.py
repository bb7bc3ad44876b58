# ruff: noqa: SLF001 - Faust's consumer bookkeeping, as the door (streams/faust_internals.py) keeps it, is what is checked
"""The batch-draining consumer (SHELFQ_STREAMS_BATCH_CONSUMER): what the worker does with a
fetched batch, and the acks it gives Faust's consumer, checked against Faust's own commit
arithmetic (``_new_offset``). tests/integration/test_streams.py runs real workers with it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import DeadLetter, decode, encode
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.settings import Settings
from shelfq.streams import faust_internals
from shelfq.streams.app import create_app
from shelfq.streams.config import StreamsConfig
from tests.unit.test_delivery_guards import RecordingConsumer, RecordingReader
from tests.unit.test_streams_outputs import RecordingProducer

PREFIX = "batches."


def record(tp: TP, offset: int, value: bytes = b"not json") -> SimpleNamespace:
    """What aiokafka's fetcher gives: only what the worker reads of it."""
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, key=b"u", value=value)


def batch_worker(consumer: RecordingConsumer | None = None):
    app, worker = create_app(Settings.from_env(topic_prefix=PREFIX), StreamsConfig(batch_consumer=True))
    if consumer is not None:
        app.consumer = consumer
    app.producer = RecordingProducer()
    worker.assign({0})
    return app, worker


async def hand_over(worker, producer: RecordingProducer, batch) -> list:
    """The consumer's hand-over, with the broker answering whenever the worker waits."""
    task = asyncio.ensure_future(worker.on_records(batch, 0.0))
    while not task.done():
        await asyncio.sleep(0)
        await producer.flush()
    return await task


def test_the_setting_gives_faust_the_batch_consumer_and_defaults_off() -> None:
    app, _worker = create_app(Settings.from_env(topic_prefix=PREFIX), StreamsConfig.from_env({}))
    assert not isinstance(app.consumer, faust_internals.BatchDrainingConsumer)
    assert isinstance(app.consumer, faust_internals.ReadCommittedConsumer)
    app, worker = create_app(Settings.from_env(topic_prefix=PREFIX),
                             StreamsConfig.from_env({"SHELFQ_STREAMS_BATCH_CONSUMER": "1"}))
    assert isinstance(app.consumer, faust_internals.BatchDrainingConsumer)
    assert app.consumer.batch_handler == worker.on_records
    with pytest.raises(ConfigError, match="SHELFQ_STREAMS_BATCH_CONSUMER"):
        StreamsConfig.from_env({"SHELFQ_STREAMS_BATCH_CONSUMER": "maybe"})


def test_fetches_bring_at_most_the_partition_bytes_set() -> None:
    app, _worker = create_app(Settings.from_env(topic_prefix=PREFIX), StreamsConfig.from_env({}))
    assert app.conf.consumer_max_fetch_size == 65536, "not Faust's 1 MiB: a backlog's feedback would wait"
    app, _worker = create_app(Settings.from_env(topic_prefix=PREFIX),
                              StreamsConfig.from_env({"SHELFQ_STREAMS_FETCH_PARTITION_BYTES": "4096"}))
    assert app.conf.consumer_max_fetch_size == 4096
    with pytest.raises(ConfigError, match="fetch_partition_bytes"):
        StreamsConfig.from_env({"SHELFQ_STREAMS_FETCH_PARTITION_BYTES": "100"})


def test_bench_join_refuses_impossible_worker_counts(capsys: pytest.CaptureFixture) -> None:
    from shelfq.cli.main import main

    assert main(["bench", "join", "--workers", "0", "--bootstrap-servers", "127.0.0.1:9"]) == 2
    assert "--workers must be within 1 and 64" in capsys.readouterr().err


def dead_lettered_offsets(producer: RecordingProducer) -> list[int | None]:
    """The offsets of the dead letters the broker took, in the order they were sent."""
    return [decode(v, DeadLetter).offset for t, _k, v in producer.delivered if t == PREFIX + "dlq"]


def test_a_batch_is_joined_flushed_and_its_offsets_holes_included_are_returned_as_done() -> None:
    consumer = RecordingConsumer()
    app, worker = batch_worker(consumer)
    slates, feedback = TP(PREFIX + "slates", 0), TP(PREFIX + "feedback", 0)
    worker.ownership.start_offsets = {slates: 3, feedback: 0}
    worker.holes.reader = reader = RecordingReader(holds={4})  # 5: a transaction marker, say
    slate = encode(EXAMPLES["slates"][1])
    batch = [(slates, [record(slates, 3, slate), record(slates, 6), record(slates, 4)]),
             (feedback, [record(feedback, 0), record(feedback, 1)])]
    done = asyncio.run(hand_over(worker, app.producer, batch))
    assert reader.reads == [(PREFIX + "slates", 0, 4, 6)]
    assert dead_lettered_offsets(app.producer) == [4, 6, 0, 1], "the hole's message first, the repeat of 4 skipped"
    assert done == [(slates, 3, 7), (feedback, 0, 2)]
    assert EXAMPLES["slates"][1].request_id in worker.join.records, "the valid slate was joined"
    assert consumer.calls == [], "no gap: the acked range covers the hole"
    # The next batch starts where this one ended, so a marker between batches is covered too.
    done = asyncio.run(hand_over(worker, app.producer, [(slates, [record(slates, 8)])]))
    assert done == [(slates, 7, 9)]


class RevokingProducer(RecordingProducer):
    """Partition 1 is revoked while the batch's outputs are being sent."""

    def __init__(self, worker) -> None:
        super().__init__()
        self.worker = worker

    async def send(self, *args: Any) -> asyncio.Future:
        if 1 in self.worker.partitions:
            self.worker.on_revoked({1})
        return await super().send(*args)


def test_a_partition_revoked_during_the_batch_is_not_acked() -> None:
    app, worker = batch_worker(RecordingConsumer())
    worker.assign({0, 1})
    kept, revoked = TP(PREFIX + "slates", 0), TP(PREFIX + "slates", 1)
    worker.ownership.start_offsets = {kept: 0, revoked: 0}
    app.producer = RevokingProducer(worker)
    done = asyncio.run(hand_over(worker, app.producer, [(kept, [record(kept, 0)]), (revoked, [record(revoked, 0)])]))
    assert worker.partitions == {0}, "revoked during the flush"
    assert done == [(kept, 0, 1)]


def test_a_hole_the_broker_cannot_give_acks_nothing_and_stops_the_worker() -> None:
    app, worker = batch_worker(RecordingConsumer())
    tp = TP(PREFIX + "impressions", 0)
    worker.ownership.start_offsets = {tp: 0}
    worker.holes.reader = RecordingReader(holds=set(), fail=True)
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    app.crash = crash
    done = asyncio.run(hand_over(worker, app.producer, [(tp, [record(tp, 0), record(tp, 3)])]))
    assert done == [] and len(crashed) == 1
    assert app.producer.sent == [], "nothing of the batch was sent"


def test_acked_ranges_let_faust_commit_past_them_once() -> None:
    """Faust's commit takes the acked offsets up to the first one missing: the ranges must
    make that the end of what the worker did, holes included, and never count twice."""
    app, _worker = create_app(Settings.from_env(topic_prefix=PREFIX), StreamsConfig(batch_consumer=True))
    consumer = app.consumer
    tp = TP(PREFIX + "feedback", 2)
    consumer._committed_offset[tp] = 10
    consumer._ack_ranges([(tp, 8, 14)])  # from before the committed offset: only 10 on count
    consumer._ack_ranges([(tp, 12, 16)])  # a repeat of 12, 13
    assert consumer._n_acked == 6
    assert consumer._new_offset(tp) == 16
    consumer._committed_offset[tp] = 16
    consumer._ack_ranges([(tp, 16, 16), (tp, 16, 18)])
    assert consumer._new_offset(tp) == 18


def test_a_rebalance_waits_for_the_batch_in_progress() -> None:
    app, _worker = create_app(Settings.from_env(topic_prefix=PREFIX), StreamsConfig(batch_consumer=True))
    consumer = app.consumer

    async def scenario() -> list[str]:
        said: list[str] = []
        consumer._batch_idle.clear()  # a batch is being processed
        waiting = asyncio.ensure_future(consumer.wait_empty())
        await asyncio.sleep(0.05)
        said.append("waiting" if not waiting.done() else "passed")
        consumer._batch_idle.set()
        await asyncio.wait_for(waiting, 5)
        said.append("passed")
        return said

    assert asyncio.run(scenario()) == ["waiting", "passed"]
