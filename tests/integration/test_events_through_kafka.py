"""Every event kind produced and consumed through the real broker, by both client libraries."""

from __future__ import annotations

import time

from shelfq.contracts.events import decode, encode
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.kafka import EventConsumer, ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import DLQ, EVENT_OF_TOPIC
from tests.integration.roundtrip import roundtrip
from tests.integration.conftest import aiokafka_round_trip

JSON_TOPICS = [t for t, kind in EVENT_OF_TOPIC.items() if kind is not None and t != DLQ]


def test_every_event_kind_and_a_model_round_trip(settings: Settings) -> None:
    lines: list[str] = []
    assert roundtrip(settings, lines.append), "\n".join(lines)
    assert len(lines) == len(EXAMPLES) + 1 and all(line.startswith("  ok") for line in lines)


def test_event_consumer_receives_each_kind_typed(settings: Settings, group_id: str) -> None:
    producer = ReliableProducer(settings)
    for topic in JSON_TOPICS:
        key, event = EXAMPLES[topic]
        producer.produce(settings.topic(topic), encode(event), key)
    producer.produce(settings.topic("items"), None, "sku-gone")  # a tombstone
    producer.flush()

    got = {}
    with EventConsumer(settings, "test", group_id, JSON_TOPICS) as consumer:
        deadline = time.monotonic() + 30
        while len(got) < len(JSON_TOPICS) + 1 and time.monotonic() < deadline:
            for r in consumer.poll(1.0):
                got[(r.topic, r.key)] = r.event
        consumer.commit()
        assert consumer.dlq.count == 0
    for topic in JSON_TOPICS:
        key, event = EXAMPLES[topic]
        assert got[(topic, key)] == event
    assert got[("items", "sku-gone")] is None


def test_aiokafka_uses_the_same_settings(settings: Settings, group_id: str) -> None:
    key, event = EXAMPLES["feedback"]
    value = aiokafka_round_trip(settings, settings.topic("feedback"), key.encode(), encode(event), group_id)
    assert decode(value, type(event)) == event
