"""Fixtures for tests against a real broker: per-test topics and consumer groups."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs
from shelfq.ops import scrape
from shelfq.ops.ports import free_port  # noqa: F401 - the tests import it from here
from shelfq.ops.topic_admin import delete_topics, ensure_topics

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
    """Settings with a topic prefix of this test's own, every topic created, deleted after:
    the shelfq topics and those the components made with the prefix (Faust's changelog and
    assignor topics), so the suite leaves the broker as it found it."""
    prefix = f"test-{uuid.uuid4().hex[:8]}."
    s = Settings.from_env(topic_prefix=prefix, partitions=3)
    ensure_topics(s)
    yield s
    made = AdminClient(s.confluent_config()).list_topics(timeout=30).topics
    delete_topics(s, sorted({spec.name for spec in topic_specs(s).values()} | {t for t in made if t.startswith(prefix)}))


@pytest.fixture
def group_id() -> str:
    return f"test-group-{uuid.uuid4().hex[:8]}"


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


class ShelfqProcess:
    """A long-running ``shelfq <command>`` in a subprocess, with its own /metrics port and log."""

    def __init__(self, command: list[str], settings: Settings, log: Path, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shelfq", *command, "--topic-prefix", settings.topic_prefix,
             "--metrics-port", str(self.port)],
            env={**os.environ, "SHELFQ_PARTITIONS": str(settings.partitions), **(env or {})},
            stdout=open(log, "ab"), stderr=subprocess.STDOUT)

    def metric(self, name: str, label: str = "") -> float:
        """The sum of a metric's series (those whose labels contain ``label``); 0 if unreachable."""
        return scrape.metric(self.port, name, label)

    def wait(self, condition, what: str, timeout: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"process exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def kill9(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a clean stop), then SIGKILL if it does not go; returns the exit status."""
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode


def read_topic(settings: Settings, topic: str, until, timeout: float = 60.0) -> list[bytes]:
    """Values of a logical topic from the beginning, until ``until(values)`` holds (asked only
    when the topic is drained for now) or ``timeout``."""
    import time

    from confluent_kafka import Consumer

    consumer = Consumer(settings.confluent_config(**{"group.id": f"reader-{uuid.uuid4().hex}",
                                                     "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.topic(topic)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.3)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
            elif until(values):
                break
    finally:
        consumer.close()
    return values
