"""Fixtures for tests against a real broker: per-test topics and consumer groups."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from contracts.settings import Settings
from contracts.topics import topic_specs
from shelfq.topic_admin import delete_topics, ensure_topics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The settings of the broker the suite runs against; fails loudly if none is up."""
    settings = Settings.from_env()
    try:
        AdminClient(settings.confluent_config(log_level=0)).list_topics(timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable broker
        pytest.fail(
            f"no Kafka broker at {settings.bootstrap} ({exc}); run the tests with `make test`, "
            "or start one with `shelfq broker start`",
            pytrace=False,
        )
    return settings


@pytest.fixture
def settings(base_settings: Settings) -> Iterator[Settings]:
    """Settings with a topic prefix of this test's own, every topic created, deleted after."""
    prefix = f"test-{uuid.uuid4().hex[:8]}."
    s = Settings.from_env(topic_prefix=prefix, partitions=3)
    ensure_topics(s)
    yield s
    delete_topics(s, [spec.name for spec in topic_specs(s).values()])


@pytest.fixture
def group_id() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aiokafka_round_trip(settings: Settings, topic: str, key: bytes, value: bytes, group_id: str) -> bytes:
    """Produce one message and read it back with aiokafka clients built from the settings alone."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def run() -> bytes:
        producer = AIOKafkaProducer(**settings.aiokafka_config())
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, group_id=group_id, auto_offset_reset="earliest", **settings.aiokafka_config())
        await consumer.start()
        try:
            return (await asyncio.wait_for(consumer.getone(), timeout=30)).value
        finally:
            await consumer.stop()

    return asyncio.run(run())
