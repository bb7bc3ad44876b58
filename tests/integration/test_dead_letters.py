"""A malformed message read by a real consumer ends in dlq with its origin and reason."""

from __future__ import annotations

import dataclasses
import json
import time

from confluent_kafka import Consumer

from contracts.events import DeadLetter, Request, decode, encode
from contracts.examples import EXAMPLES
from contracts.kafka import EventConsumer, ReliableProducer
from contracts.settings import Settings

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
