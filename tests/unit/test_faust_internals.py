"""The members ``streams/faust_internals.py`` reaches are where it expects them in the installed
Faust and aiokafka. An upgrade that moves one fails here, by name, rather than as a worker that
quietly reads aborted transactions or fetches at once under light traffic."""

from __future__ import annotations

import asyncio
import inspect

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from faust.types import TP

from shelfq.contracts.settings import Settings
from shelfq.streams import faust_internals
from shelfq.streams.app import create_app
from shelfq.streams.config import StreamsConfig


def test_the_worker_gets_the_read_committed_consumer_and_faust_state_reads_as_unknown_at_first() -> None:
    app, _worker = create_app(Settings.from_env(topic_prefix="door."), StreamsConfig())
    consumer, tp = app.consumer, TP("door.slates", 0)
    assert isinstance(consumer, faust_internals.ReadCommittedConsumer)
    assert faust_internals.committed_offset(consumer, tp) is None
    assert not faust_internals.is_paused(consumer, tp) and not faust_internals.is_buffered(consumer, tp)
    asyncio.run(faust_internals.add_gap(consumer, tp, 3, 5))  # no commit known: accepted as it is


def test_aiokafka_reads_the_settings_the_door_sets_on_its_consumer_and_fetcher() -> None:
    """The isolation level is set on the consumer before it starts, which hands it to its
    fetcher; the fetch limits on the fetcher, which builds each request from them."""
    assert "isolation_level=self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)
    fetcher = inspect.getsource(Fetcher)
    assert "self._fetch_max_wait_ms,\n" in fetcher and "self._fetch_min_bytes,\n" in fetcher
