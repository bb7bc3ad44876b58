"""A malformed message read by a real consumer ends in dlq with its origin and reason; a message
too large for the broker ends there too, without an exception."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from shelfq.contracts.events import DeadLetter, Request, decode, encode
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.kafka import EventConsumer, ReliableProducer, topic_partitions
from shelfq.contracts.errors import ConfigError
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs
from shelfq.ops.topic_admin import delete_topics, ensure_topics

GOOD = EXAMPLES["requests"][1]
BAD = {
    "not json": b"{oops",
    "slate too big": json.dumps({**json.loads(encode(GOOD)), "slate_size": 500}).encode(),
    "wrong kind": encode(EXAMPLES["feedback"][1]),
    "null value": None,
    "too large": json.dumps({**json.loads(encode(GOOD)), "padding": "x" * 3000}).encode(),
    "binary": b"\x00\xff\x10\x80",
}
DETAIL = {
    "not json": "message: malformed JSON: ",
    "slate too big": "slate_size: out of range",
    "wrong kind": "schema: expected 'shelfq.request.v1', got 'shelfq.feedback.v1'",
    "null value": "message: value is empty",
    "too large": "message: payload is",
    "binary": "message: malformed JSON: ",
}


def read_dlq(settings: Settings, expect: int, timeout: float = 30.0) -> list[DeadLetter]:
    consumer = Consumer(settings.confluent_config(**{"group.id": "dlq-reader", "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.topic("dlq")])
    out: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(decode(msg.value(), DeadLetter))
    finally:
        consumer.close()
    return out


def test_malformed_requests_go_to_dlq_with_origin_and_reason(settings: Settings, group_id: str) -> None:
    settings = dataclasses.replace(settings, max_event_bytes=2048, dlq_max_value_bytes=1024)
    topic = settings.topic("requests")
    producer = ReliableProducer(settings)
    offsets: dict[str, tuple[int, int]] = {}
    for case, value in [("good", encode(GOOD)), *BAD.items()]:
        producer.produce(topic, value, key=f"user-{case}",
                         on_delivered=lambda m, c=case: offsets.__setitem__(c, (m.partition(), m.offset())))
    producer.flush()

    received = []
    with EventConsumer(settings, "test-agent", group_id, ["requests"]) as consumer:
        deadline = time.monotonic() + 30
        while consumer.dlq.count < len(BAD) and time.monotonic() < deadline:
            received += consumer.poll(1.0)
        consumer.commit()
    assert [r.event for r in received] == [GOOD]
    assert isinstance(received[0].event, Request)

    letters = {dl.key: dl for dl in read_dlq(settings, len(BAD))}
    assert set(letters) == {f"user-{case}" for case in BAD}
    for case, value in BAD.items():
        dl = letters[f"user-{case}"]
        assert (dl.component, dl.reason, dl.topic) == ("test-agent", "invalid", topic)
        assert (dl.partition, dl.offset) == offsets[case]
        assert dl.detail.startswith(DETAIL[case]), (case, dl.detail)
        assert dl.value_bytes == (0 if value is None else len(value))
    assert letters["user-too large"].truncated and letters["user-binary"].value_encoding == "base64"


def test_offsets_are_committed_only_by_commit(settings: Settings, group_id: str) -> None:
    producer = ReliableProducer(settings)
    producer.produce(settings.topic("requests"), encode(GOOD), key="u-1")
    producer.flush()

    def drain() -> list:
        got = []
        with EventConsumer(settings, "test", group_id, ["requests"]) as consumer:
            deadline = time.monotonic() + 15
            while not got and time.monotonic() < deadline:
                got = consumer.poll(1.0)
            if commit:
                consumer.commit()
        return got

    commit = False
    assert len(drain()) == 1  # read, not committed: a restart must see it again
    commit = True
    assert len(drain()) == 1  # seen again, now committed
    producer.produce(settings.topic("requests"), encode(EXAMPLES["requests"][1]), key="u-2")
    producer.flush()
    again = drain()
    assert [r.key for r in again] == ["u-2"], "the committed message is not delivered again"


@pytest.fixture
def small_topic(settings: Settings) -> Iterator[str]:
    """A topic of this test's own whose max.message.bytes is 20,000, set when it is created (a
    change to an existing topic reaches its log a moment after the admin call returns)."""
    name = f"{settings.topic_prefix}small"
    admin = AdminClient(settings.confluent_config())
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "20000"})])[name].result(timeout=30)
    topic_partitions(admin, name)
    yield name
    delete_topics(settings, [name])


def read_topic(settings: Settings, topic: str, expect: int, timeout: float = 30.0) -> list:
    consumer = Consumer(settings.confluent_config(**{"group.id": f"reader-{os.getpid()}-{time.time()}",
                                                     "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(msg)
    finally:
        consumer.close()
    return out


def test_a_message_too_large_for_the_topic_is_dead_lettered_and_its_batch_mates_delivered(
        settings: Settings, small_topic: str) -> None:
    topic = small_topic
    # One key, one partition, and a long linger: the small ones share the big one's batch, which
    # the broker refuses whole.
    producer = ReliableProducer(settings, "test-agent", **{"linger.ms": 200})
    delivered: list[bytes] = []
    big = os.urandom(60_000)  # incompressible: over the topic's limit after lz4 too
    huge = b"x" * 1_200_000  # over the producer's own message.max.bytes: refused at produce()
    requests_topic = settings.topic("requests")
    handed: list[str] = []

    def dead_letter_the_request(detail: str) -> None:
        handed.append(detail)
        producer.dead_letters.send("too_large", requests_topic, b'{"request": 1}', key="u-1", detail=f"its slate: {detail}")

    for value, kwargs in [(b"small-a", {}), (big, {}), (b"small-b", {}), (huge, {}),
                          (os.urandom(30_000), {"on_too_large": dead_letter_the_request}), (b"small-c", {})]:
        producer.produce(topic, value, key="u-1", on_delivered=lambda m: delivered.append(m.value()), **kwargs)
    producer.flush()  # no exception
    producer.produce(topic, b"after", key="u-1", on_delivered=lambda m: delivered.append(m.value()))
    producer.flush()  # the idempotent producer goes on after the refusals

    assert delivered == [b"small-a", b"small-b", b"small-c", b"after"]
    assert [m.value() for m in read_topic(settings, topic, 4)] == delivered
    assert producer.refused == 3
    assert producer.dead_letters.by_reason == {"too_large": 3} and producer.dead_letters.component == "test-agent"
    assert len(handed) == 1 and "30003 bytes sent alone" in handed[0]

    letters = sorted(read_dlq(settings, 3), key=lambda dl: dl.value_bytes)
    assert [(dl.reason, dl.topic, dl.key, dl.value_bytes) for dl in letters] == [
        ("too_large", requests_topic, "u-1", len(b'{"request": 1}')),
        ("too_large", topic, "u-1", len(big)),
        ("too_large", topic, "u-1", len(huge))]
    assert letters[0].detail.startswith(f"its slate: {topic}: the broker refused the message of 30003 bytes sent alone")
    assert letters[1].detail.startswith(f"{topic}: the broker refused the message of 60003 bytes sent alone "
                                        "(over the topic max.message.bytes)"), letters[1].detail
    assert letters[2].detail == (f"{topic}: the message is 1200003 bytes, over the producer's message.max.bytes "
                                 "(1000000)")
    assert letters[2].truncated and letters[2].value is not None
    assert all(dl.component == "test-agent" and dl.partition is None for dl in letters)


def test_a_model_too_large_for_the_models_topic_is_a_config_error_not_a_dead_letter(settings: Settings) -> None:
    # Topics of their own, created with a models topic of 64 KiB.
    settings = dataclasses.replace(settings, topic_prefix=f"{settings.topic_prefix}small-models.",
                                   model_max_bytes=64 << 10, max_event_bytes=16 << 10)
    ensure_topics(settings)
    try:
        # As the learner makes it: the client's limit above the topic's, so the broker decides.
        producer = ReliableProducer(settings, "test-learner",
                                    **{"message.max.bytes": settings.model_max_bytes + (1 << 16)})
        models_topic = settings.topic("models")
        producer.produce(models_topic, os.urandom(100 << 10), key="dqn")
        with pytest.raises(ConfigError, match=r"a model does not fit the models topic: .*102403 bytes sent alone.*"
                                              r"raise SHELFQ_MODEL_MAX_BYTES"):
            producer.flush()
        with pytest.raises(ConfigError, match=r"the message is 204803 bytes, over the producer's message.max.bytes"):
            producer.produce(models_topic, os.urandom(200 << 10), key="dqn")
        assert producer.dead_letters is None and producer.refused == 2
        producer.produce(models_topic, os.urandom(10 << 10), key="dqn")
        producer.flush()
        assert len(read_topic(settings, models_topic, 1)) == 1
    finally:
        delete_topics(settings, [spec.name for spec in topic_specs(settings).values()])


def test_a_record_the_broker_will_not_store_is_dead_lettered_as_refused(settings: Settings) -> None:
    topic = settings.topic("items")  # compacted: a record without a key is refused
    producer = ReliableProducer(settings, "test-frontend")
    producer.produce(topic, b'{"not": "keyed"}', key=None)
    producer.produce(topic, b'{"keyed": 1}', key="i-1")
    producer.flush()
    assert [m.key() for m in read_topic(settings, topic, 1)] == [b"i-1"]
    [letter] = read_dlq(settings, 1)
    assert (letter.reason, letter.topic, letter.key, letter.component) == ("refused", topic, None, "test-frontend")
    assert letter.detail == f"{topic}: the broker refused the message of 16 bytes sent alone: Broker: Broker failed to validate record"
