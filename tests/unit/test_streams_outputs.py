"""What the streams worker sends, and what it does with what cannot be sent: outputs over the
producer's size limit, refusals for size by the broker, user histories against replays.

Faust's producer is replaced by a recorder that models what matters here: the client refuses a
message over its limit at ``send``, the broker refuses a whole batch (every message sent since
the last flush to one topic) over the topic's limit. tests/integration/test_streams.py runs
real workers against a real broker."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, RequestTimedOutError
from faust.types import TP

from shelfq.contracts.events import DeadLetter, Feedback, Impression, Slate, State, Transition, UserState, decode, encode
from shelfq.contracts.settings import Settings
from shelfq.streams.app import create_app
from shelfq.streams.config import StreamsConfig
from shelfq.streams.join import JoinConfig
from shelfq.streams.limits import message_size
from shelfq.streams.tables import RECORD_CODEC

PREFIX = "outputs."


class RecordingProducer:
    """Sends are held until ``flush``; then each topic's held messages form one batch, refused
    as a whole if it is over ``broker_limit``."""

    def __init__(self, client_limit: int = 1_000_000, broker_limit: int | None = None,
                 failing_topic: str | None = None) -> None:
        self.client_limit, self.broker_limit, self.failing_topic = client_limit, broker_limit, failing_topic
        self.held: list[tuple[str, bytes | None, bytes | None, asyncio.Future]] = []
        self.delivered: list[tuple[str, bytes | None, bytes | None]] = []
        self.refused: list[tuple[str, bytes | None, bytes | None]] = []
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []  # in the order send() was called

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: Any, timestamp: Any,
                   headers: Any) -> asyncio.Future:
        if message_size(key, value) > self.client_limit:
            raise AssertionError(f"send() of {message_size(key, value)} bytes would raise ProducerSendError")
        fut = asyncio.get_running_loop().create_future()
        self.held.append((topic, key, value, fut))
        self.sent.append((topic, key, value))
        return fut

    async def flush(self) -> None:
        held, self.held = self.held, []
        by_topic: dict[str, list] = {}
        for entry in held:
            by_topic.setdefault(entry[0], []).append(entry)
        for entries in by_topic.values():
            size = sum(message_size(k, v) for _t, k, v, _f in entries)
            refused = self.broker_limit is not None and size > self.broker_limit
            for topic, key, value, fut in entries:
                if topic == self.failing_topic:
                    fut.set_exception(RequestTimedOutError())
                elif refused:
                    self.refused.append((topic, key, value))
                    fut.set_exception(MessageSizeTooLargeError())
                else:
                    self.delivered.append((topic, key, value))
                    fut.set_result(None)
        await asyncio.sleep(0)  # let the done callbacks run

    def on(self, logical: str) -> list[tuple[bytes | None, bytes | None]]:
        return [(k, v) for t, k, v in self.delivered if t == PREFIX + logical]


async def flush(worker, producer: RecordingProducer) -> None:
    """The worker's flush, with the broker answering whenever it waits."""
    task = asyncio.ensure_future(worker.flush())
    while not task.done():
        await asyncio.sleep(0)
        await producer.flush()
    await task
    await producer.flush()


def worker_with(producer: RecordingProducer, **config: Any):
    app, worker = create_app(Settings.from_env(topic_prefix=PREFIX),
                             StreamsConfig(join=JoinConfig(window_s=10, allowed_lateness_s=0), **config))
    app.producer = producer
    worker.assign({0})
    return app, worker


def big_context(entries: int, chars: int) -> dict[str, str]:
    return {f"k{i}": "x" * chars for i in range(entries)}


def session(request: str, user: str, ts: float, items: list[str], context: dict | None = None) -> list[tuple[str, Any]]:
    """A slate, its impression and the session's exit: every item closes at once."""
    state = State(context=context or {})
    return [
        ("slates", Slate(request_id=request, user_id=user, session_id=f"s-{request}", ts=ts, items=items,
                         scores=[1.0] * len(items), propensities=[1.0] * len(items), policy="random", state=state)),
        ("impressions", Impression(request_id=request, user_id=user, session_id=f"s-{request}", ts=ts + 0.01,
                                   items=items)),
        ("feedback", Feedback(request_id=request, user_id=user, session_id=f"s-{request}", ts=ts + 0.1, event="exit")),
    ]


NEXT_OFFSET: dict[tuple[int, str], int] = {}  # (id of the worker, topic): the next offset it is given


@pytest.fixture(autouse=True)
def _fresh_offsets() -> None:
    NEXT_OFFSET.clear()


def delivered(topic: str, offset: int, key: bytes | None, value: bytes | None) -> SimpleNamespace:
    """An event as Faust hands it to the agent: only what the worker reads of it."""
    return SimpleNamespace(message=SimpleNamespace(tp=TP(PREFIX + topic, 0), topic=PREFIX + topic, partition=0,
                                                   offset=offset, key=key, value=value, time_in=None))


def process(worker, events: list[tuple[str, Any]]) -> None:
    """``events`` as one batch from Faust, each topic's offsets following on from the last batch's."""
    batch = []
    for topic, event in events:
        offset = NEXT_OFFSET.get((id(worker), topic), 0)
        NEXT_OFFSET[(id(worker), topic)] = offset + 1
        batch.append(delivered(topic, offset, event.user_id.encode(), encode(event)))
    worker.on_batch(batch)


def sample(worker, name: str, **labels: str) -> float | None:
    """A series' value as /metrics shows it."""
    return worker.metrics.registry.get_sample_value(name, labels)


def transition_ids(values: list[tuple[bytes | None, bytes | None]]) -> list[str]:
    return sorted(decode(v, Transition).transition_id for _k, v in values)


def letters(producer: RecordingProducer) -> list[DeadLetter]:
    return [decode(v, DeadLetter) for _k, v in producer.on("dlq")]


def test_a_transition_over_the_size_limit_is_dead_lettered_and_never_emitted_again() -> None:
    producer = RecordingProducer(client_limit=20_000)
    app, worker = worker_with(producer, max_message_bytes=20_000)
    assert app.conf.producer_max_request_size == 20_000, "the limit is the producer's"
    now = time.time()
    # The transition carries the context twice (state and next_state): ~26 KB; its record ~13 KB.
    events = session("big", "u1", now, ["a"], big_context(64, 200)) + session("small", "u2", now, ["b", "c"])

    async def scenario() -> None:
        process(worker, events)
        await flush(worker, producer)
        await flush(worker, producer)  # the records the acks settled
        record = worker.join.records["big"]
        assert record.closed_at is not None and record.emitted == [0], "settled as if acknowledged"
        for later in (now + 20, now + 60):  # windows long past: nothing left to emit
            worker.on_tick(later)
            await flush(worker, producer)

    asyncio.run(scenario())
    assert transition_ids(producer.on("transitions")) == ["small:0", "small:1"]
    [letter] = letters(producer)
    assert letter.reason == "too_large" and letter.topic == PREFIX + "transitions" and "big:0" in letter.detail
    assert letter.truncated and letter.key == "u1"
    changelog = worker.records.changelog_topic.get_topic_name()
    stored = [RECORD_CODEC.loads(v) for t, k, v in producer.delivered if t == changelog and k == b"big" and v]
    assert stored[-1].closed_at is not None, "the settled record is stored: a restart does not re-emit it"
    assert worker.join.pending_items() == 0
    assert sample(worker, "shelfq_dead_letters_total", reason="too_large") == 1


def test_a_size_refusal_by_the_broker_is_judged_alone_and_its_batch_mates_are_delivered() -> None:
    producer = RecordingProducer(client_limit=1_000_000, broker_limit=20_000)
    _app, worker = worker_with(producer)
    now = time.time()
    events = session("big", "u1", now, ["a"], big_context(64, 200)) + session("small", "u2", now, ["b", "c"])

    async def scenario() -> None:
        process(worker, events)
        await flush(worker, producer)  # one batch of three transitions, over the topic's limit: all refused
        assert len([t for t, _k, _v in producer.refused if t == PREFIX + "transitions"]) == 3
        for _ in range(3):
            await flush(worker, producer)  # each sent again alone
        assert worker.join.records["big"].closed_at is not None, "settled"
        for later in (now + 20, now + 60):
            worker.on_tick(later)
            await flush(worker, producer)

    asyncio.run(scenario())
    assert transition_ids(producer.on("transitions")) == ["small:0", "small:1"]
    [letter] = letters(producer)
    assert letter.reason == "too_large" and "big:0" in letter.detail and "sent alone" in letter.detail
    # Sent once in the batch and once alone, never again.
    assert sum(1 for t, k, _v in producer.sent if t == PREFIX + "transitions" and k == b"u1") == 2
    assert sample(worker, "shelfq_streams_transitions_total") == 2
    assert worker.join.pending_items() == 0


def test_a_dead_letter_too_large_for_the_limit_is_cut_shorter() -> None:
    producer = RecordingProducer(client_limit=4096)
    _app, worker = worker_with(producer, max_message_bytes=4096)
    # 3,000 control characters: valid UTF-8 that JSON writes as \u0001, six bytes each.
    value = b'{"schema": "shelfq.feedback.v1", "x": "' + b"\x01" * 3000 + b'"}'

    async def scenario() -> None:
        worker.on_batch([delivered("feedback", 5, b"u1", value)])
        await flush(worker, producer)

    asyncio.run(scenario())
    [(key, sent)] = producer.on("dlq")
    assert message_size(key, sent) <= 4096
    letter = decode(sent, DeadLetter)
    assert letter.reason == "invalid" and letter.truncated and letter.offset == 5 and letter.value_bytes == len(value)


def test_a_join_record_too_large_to_store_is_dead_lettered_and_the_worker_goes_on() -> None:
    producer = RecordingProducer(client_limit=8192)
    _app, worker = worker_with(producer, max_message_bytes=8192)
    now = time.time()
    [(_topic, slate)] = session("held", "u1", now, ["a"], big_context(64, 150))[:1]

    async def scenario() -> None:
        process(worker, [("slates", slate)])  # waits for its impression: a record ~10 KB
        await flush(worker, producer)
        process(worker, session("small", "u2", now, ["b"]))
        await flush(worker, producer)

    asyncio.run(scenario())
    [letter] = letters(producer)
    assert letter.reason == "too_large" and "join record held" in letter.detail
    assert letter.topic == worker.records.changelog_topic.get_topic_name()
    assert not [k for t, k, _v in producer.sent if k == b"held" and t != PREFIX + "dlq"], "never sent"
    assert "held" in worker.join.records, "kept in memory"
    assert transition_ids(producer.on("transitions")) == ["small:0"]


def clicks(request: str, user: str, ts: float, item: str = "a") -> list[tuple[str, Any]]:
    """A slate and impression of one request, a click and a cart on ``item``: its window stays open."""
    shown = session(request, user, ts, [item, "other"])[:2]
    return shown + [("feedback", Feedback(request_id=request, user_id=user, session_id=f"s-{request}", ts=ts + 0.1 + k,
                                          event=kind, item_id=item)) for k, kind in enumerate(("click", "add_to_cart"))]


def history_of(worker, user: str) -> list[tuple[str, str]]:
    state = worker.histories.data[user]
    return [(i.item_id, i.event) for i in state.history]


def test_the_join_records_wait_until_the_histories_their_feedback_went_to_are_on_the_broker() -> None:
    """Were a record on the broker and its history not, a crash between the two would lose the
    interaction from the history: the replay is a duplicate to the restored record."""
    producer = RecordingProducer()
    _app, worker = worker_with(producer)
    changelog = worker.records.changelog_topic.get_topic_name()
    process(worker, clicks("r1", "u1", time.time()))

    async def scenario() -> None:
        flushing = asyncio.ensure_future(worker.flush())
        for _ in range(5):
            await asyncio.sleep(0)
        assert [k for t, k, _v in producer.sent if t == PREFIX + "user-state"] == [b"u1"]
        assert not [k for t, k, _v in producer.sent if t == changelog], "no record before its history is acked"
        assert not flushing.done()
        await producer.flush()  # the broker acknowledges the history
        await flushing
        assert [k for t, k, _v in producer.sent if t == changelog] == [b"r1"]

    asyncio.run(scenario())


def test_a_history_the_broker_did_not_take_holds_its_records_back_and_stops_the_worker() -> None:
    producer = RecordingProducer(failing_topic=PREFIX + "user-state")
    app, worker = worker_with(producer)
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    app.crash = crash
    process(worker, clicks("r1", "u1", time.time()))

    async def scenario() -> None:
        await flush(worker, producer)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert isinstance(crashed[0], RequestTimedOutError)
    assert not [k for t, k, _v in producer.sent if t == worker.records.changelog_topic.get_topic_name()]


def test_feedback_replayed_after_its_history_was_stored_is_not_counted_twice() -> None:
    """The history reached the broker, the record did not: a restarted worker restores the
    history, finds no record, and attributes the replayed feedback again."""
    now = time.time()
    producer = RecordingProducer()
    _app, first = worker_with(producer)
    process(first, clicks("r1", "u1", now))
    asyncio.run(flush(first, producer))
    stored = decode([v for t, k, v in producer.delivered if t == PREFIX + "user-state"][-1], UserState)
    assert [(i.item_id, i.event) for i in stored.history] == [("a", "click"), ("a", "add_to_cart")]

    _app, restarted = worker_with(RecordingProducer())
    restarted.histories.data["u1"] = stored  # what recovery restores from user-state
    process(restarted, clicks("r1", "u1", now))  # the replay: no record was restored
    assert history_of(restarted, "u1") == [("a", "click"), ("a", "add_to_cart")]
    assert restarted.join.outcomes[("feedback", "duplicate")] == 0, "attributed again by the join"
    process(restarted, clicks("r2", "u1", now + 5, item="b"))  # new interactions still count
    assert history_of(restarted, "u1") == [("a", "click"), ("a", "add_to_cart"), ("b", "click"), ("b", "add_to_cart")]
