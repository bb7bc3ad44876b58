"""Round-trip one example of every event kind through Kafka and check each comes back intact
(the helper of test_events_through_kafka).
It proves the broker, the topics and the contracts work together, for every event kind and a
model, before the tests of the components that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from confluent_kafka import Consumer, TopicPartition

from shelfq.contracts.errors import EventError, ShelfqError
from shelfq.contracts.events import decode, encode
from shelfq.contracts.examples import EXAMPLES, example_model
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.models import ModelHeaders, read_safetensors_index
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import EVENT_OF_TOPIC, MODELS


class Sent(NamedTuple):
    logical: str
    key: str
    value: bytes
    partition: int
    offset: int


def produce_examples(settings: Settings) -> list[Sent]:
    """Produce every example (and a tiny model) and wait until the broker has them all."""
    producer = ReliableProducer(settings)
    sent: list[Sent] = []
    model, headers = example_model()
    messages: list[tuple[str, str, bytes, list[tuple[str, bytes]] | None]] = [
        (logical, key, encode(event), None) for logical, (key, event) in EXAMPLES.items()]
    messages.append((MODELS, headers.policy, model, headers.to_headers()))
    for logical, key, value, hdrs in messages:

        def delivered(msg: Any, logical: str = logical, key: str = key, value: bytes = value) -> None:
            sent.append(Sent(logical, key, value, msg.partition(), msg.offset()))

        producer.produce(settings.topic(logical), value, key, headers=hdrs, on_delivered=delivered)
    producer.flush()
    return sent


def fetch(settings: Settings, topic: str, partition: int, offset: int, timeout: float = 10.0) -> Any:
    """Read the one message at topic/partition/offset."""
    consumer = Consumer(settings.confluent_config(**{"group.id": "shelfq-roundtrip", "enable.auto.commit": False}))
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        msg = consumer.poll(timeout)
        if msg is None or msg.error() is not None:
            raise ShelfqError(f"could not read {topic}[{partition}]@{offset}: {msg.error() if msg else 'timeout'}")
        return msg
    finally:
        consumer.close()


def roundtrip(settings: Settings, report: Callable[[str], None] = print) -> bool:
    """Send every event kind through Kafka, read each back, decode it, compare. True if all match."""
    ok = True
    for s in sorted(produce_examples(settings)):
        msg = fetch(settings, settings.topic(s.logical), s.partition, s.offset)
        where = f"{s.logical:<12} key={s.key:<6} partition {s.partition} offset {s.offset:<5}"
        try:
            if s.logical == MODELS:
                tensors = read_safetensors_index(msg.value())
                meta = ModelHeaders.from_headers(msg.headers())
                detail = f"{len(msg.value())} bytes, {len(tensors)} tensor, policy {meta.policy} v{meta.version}"
            else:
                event = decode(msg.value(), EVENT_OF_TOPIC[s.logical])  # type: ignore[arg-type]
                if event != EXAMPLES[s.logical][1] or msg.key().decode() != s.key:
                    raise EventError("", "invalid", "came back different from what was sent")
                detail = f"{len(msg.value())} bytes, {type(event).__name__}"
            report(f"  ok    {where} {detail}")
        except EventError as exc:
            ok = False
            report(f"  FAIL  {where} {exc}")
    return ok
