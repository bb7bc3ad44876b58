"""The outbox and acks: owns everything the worker sends (transitions, dead letters, user
histories, join records), in what order, and what each answer from the broker means.

Outputs are gathered per batch (record and user-state writes coalesced by key) and sent straight
to the app's producer by ``flush()``, which the agent awaits before Faust acks the batch:
Faust's own per-message send buffer is far too slow for this volume. Faust flushes the producer
before it commits source offsets, so everything an event caused is durable before the event is
marked consumed.

- A transition is recorded as emitted (``Join.acked``) only once the broker acknowledged it, so
  a crash in between re-emits it with the same transition_id and the same content; one the
  broker did not take is emitted again at the next watermark step (``Join.failed``).
- An output too large for the producer is never sent: it is dead-lettered (``too_large``) and,
  if a transition, its record settled as if the broker had it, since re-emitting it could never
  succeed. One the broker refuses for its size in a batch is sent again alone (the broker
  refuses a whole batch, so a small batch-mate is refused with a large message) and judged
  then.
- Any other send that fails stops the worker: its source offsets must not be committed, and a
  restart replays from them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust

from shelfq.contracts.events import Feedback, Impression, Slate, Transition, encode
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import TRANSITIONS, USER_STATE
from shelfq.streams.dead_letters import DeadLetters
from shelfq.streams.join import Join, Output, Record
from shelfq.streams.limits import message_size, refused_for_size
from shelfq.streams.metrics import StreamsMetrics
from shelfq.streams.ownership import Ownership
from shelfq.streams.tables import RECORD_CODEC
from shelfq.streams.user_state import UserHistories

log = logging.getLogger("shelfq.streams")


class Outbox:
    """What the worker sends through ``app``'s producer, and what the broker's answers do."""

    def __init__(self, app: faust.App, settings: Settings, max_message_bytes: int, join: Join, records: faust.Table,
                 histories: UserHistories, ownership: Ownership, metrics: StreamsMetrics) -> None:
        self.app = app
        self.settings = settings
        self.join = join
        self.records = records
        self.histories = histories
        self.ownership = ownership
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.transitions_topic = settings.topic(TRANSITIONS)
        self.user_state_topic = settings.topic(USER_STATE)
        self._outbox: list[tuple[str, bytes | None, bytes | None, int | None, Any]] = []
        self._record_writes: dict[str, tuple[int, Record | None]] = {}
        # Messages the broker refused in a batch for its size, to send again alone (the broker
        # refuses a whole batch, so a small batch-mate is refused with a large message).
        self._alone: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self._flush_lock = asyncio.Lock()
        self.dead_letters = DeadLetters(settings, max_message_bytes, metrics, self.queue)

    def queue(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None, on_sent: Any) -> None:
        """Send this at the next flush; ``on_sent`` (or, if ``None``, the default judge of an
        answer, which stops the worker on a failure) is called with its future."""
        self._outbox.append((topic, key, value, partition, on_sent))

    def write_records(self, writes: dict[str, tuple[int, Record | None]]) -> None:
        """Join records to store (``None``: delete), coalesced by key until the flush."""
        self._record_writes.update(writes)

    def handle(self, out: Output, started: float, origin: tuple[int, int] | None = None) -> None:
        """Queue what one step of the join produced: its transitions (whose window the event,
        or clock tick, at monotonic time ``started`` closed), its dead letters (of the event
        from ``origin``, ``(partition, offset)``, where known) and its record writes."""
        for transition in out.transitions:
            key, value = transition.user_id.encode(), encode(transition)
            size = message_size(key, value)
            if size > self.max_message_bytes:  # send() would raise: never queue it
                self._transition_too_large(transition, key, value, f"it is {size} bytes, over the worker's "
                                           f"max_message_bytes ({self.max_message_bytes})")
                continue
            self._outbox.append((self.transitions_topic, key, value, None,
                                 lambda fut, t=transition, v=value: self._on_acked(fut, t, started, v)))
        for dl in out.dead_letters:
            # The event in hand is the one dead-lettered unless it was held earlier (then its
            # offset is not known here).
            partition, offset = origin if origin is not None else (None, None)
            user_id = cast(Slate | Impression | Feedback, dl.event).user_id  # every input event has one
            self.dead_letters.send(dl.reason, dl.detail, self.settings.topic(dl.topic), encode(dl.event),
                                   user_id.encode(), partition, offset)
        self._record_writes.update(out.writes)

    async def flush(self) -> None:
        """Send everything gathered so far to the producer (Faust flushes it before committing).

        One flush at a time: the agent and the timer both flush, and a record's newer state
        must never be overtaken by an older one on the changelog."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        """Outputs first, then user histories; the join records only once the broker has
        those histories. A record and the history its feedback went to are two writes to two
        topics, and a crash may land between them; the feedback is then read again. Were the
        record on the broker and the history not, the replay would be a duplicate to the join
        and the interaction lost from the history: the order rules that out. Were the history
        there and the record not, the replay attributes it again, and the history, which
        recognises what it holds (``streams.user_state``), does not count it twice."""
        await self._send_alone()
        record_writes, self._record_writes = self._record_writes, {}
        user_writes = self.histories.take_writes()
        for user, (partition, state) in user_writes.items():
            value = encode(state)
            if self._fits(self.user_state_topic, user.encode(), value, f"the history of user {user}", partition):
                self._outbox.append((self.user_state_topic, user.encode(), value, partition, None))
                self.metrics.user_states.inc()
        outbox, self._outbox = self._outbox, []
        histories = await self._send(outbox)
        if histories:  # one round trip, in flushes that attributed feedback only
            await asyncio.wait(histories)
            if any(f.cancelled() or f.exception() is not None for f in histories):
                return  # _on_sent stops the worker: its records must not go without their histories
        record_topic = self.records.changelog_topic.get_topic_name()
        owned = self.ownership.partitions
        for key, (partition, record) in record_writes.items():
            if partition not in owned:
                continue  # revoked meanwhile: the new owner writes this record
            stored = None if record is None else RECORD_CODEC.dumps(record)
            if self._fits(record_topic, key.encode(), stored, f"join record {key}", partition):
                self._outbox.append((record_topic, key.encode(), stored, partition, None))
        outbox, self._outbox = self._outbox, []
        await self._send(outbox)

    async def _send(self, outbox: list[tuple[str, bytes | None, bytes | None, int | None, Any]]) -> list[Any]:
        """Hand ``outbox`` to the producer; returns the futures of its user-state writes."""
        send, histories = self.app.producer.send, []
        for topic, key, value, partition, callback in outbox:
            fut: Any = await send(topic, key, value, partition, None, None)
            fut.add_done_callback(callback if callback is not None
                                  else lambda f, t=topic, k=key, v=value: self._on_sent(f, t, k, v))
            if topic == self.user_state_topic:
                histories.append(fut)
        return histories

    def _fits(self, topic: str, key: bytes | None, value: bytes | None, what: str, partition: int | None) -> bool:
        """Whether a write of the worker's own state fits the producer; if not, it is
        dead-lettered (reason ``too_large``) and not sent, so the worker goes on. The state
        stays in memory: only a restart before its next write that fits loses it. Inputs are
        bounded (``max_event_bytes``), so this takes a hostile slate or impression near that
        bound, or a ``max_message_bytes`` below it."""
        size = message_size(key, value)
        if size <= self.max_message_bytes:
            return True
        log.warning("%s is %d bytes, over SHELFQ_STREAMS_MAX_MESSAGE_BYTES (%d): not stored, dead-lettered",
                    what, size, self.max_message_bytes)
        self.dead_letters.send("too_large", f"{what} is {size} bytes, over the worker's max_message_bytes "
                               f"({self.max_message_bytes}); kept in memory only", topic, value, key, partition, None)
        return False

    async def _send_alone(self) -> None:
        """Send each message the broker refused in a batch again, in a batch of its own: the
        producer is flushed before and after it, and nothing else sends meanwhile (this runs
        under the flush lock). Its callback judges the answer. Rare: with
        ``max_message_bytes`` at most the topics' ``max.message.bytes`` the broker never
        refuses for size."""
        alone, self._alone = self._alone, []
        producer = self.app.producer
        for topic, key, value, callback in alone:
            await producer.flush()
            fut: Any = await producer.send(topic, key, value, None, None, None)
            fut.add_done_callback(callback)
            await producer.flush()

    def _on_acked(self, fut: Any, transition: Transition, started: float, value: bytes, alone: bool = False) -> None:
        if not fut.cancelled() and refused_for_size(fut.exception()):
            key = transition.user_id.encode()
            if not alone:  # perhaps a batch-mate's fault: judged when sent alone; in flight meanwhile
                self._alone.append((self.transitions_topic, key, value,
                                    lambda f, t=transition: self._on_acked(f, t, started, value, alone=True)))
                return
            self._transition_too_large(transition, key, value, f"the broker refused it ({message_size(key, value)} "
                                       f"bytes, sent alone; over the topic's max.message.bytes): {fut.exception()}")
            return
        if fut.cancelled() or fut.exception() is not None:
            # Not on the broker: emit it again at the next watermark step rather than lose it.
            log.warning("transition %s was not delivered (%s); it will be sent again",
                        transition.transition_id, "cancelled" if fut.cancelled() else fut.exception())
            self.metrics.send_failures.labels(TRANSITIONS).inc()
            self.join.failed(transition)
            return
        self.metrics.emit_latency.observe(time.monotonic() - started)
        self.metrics.count_transition(transition)  # overall and by experiment arm
        self._record_writes.update(self.join.acked(transition).writes)

    def _transition_too_large(self, transition: Transition, key: bytes, value: bytes, detail: str) -> None:
        """A transition that cannot be sent is dead-lettered, and its record settled as if the
        broker had it: re-emitting it (at every watermark step, or after every restart) could
        never succeed, and would hold its record open for ever."""
        log.warning("transition %s dead-lettered: %s", transition.transition_id, detail)
        self.dead_letters.send("too_large", f"transition {transition.transition_id}: {detail}", self.transitions_topic,
                               value, key, None, None)
        self._record_writes.update(self.join.acked(transition).writes)

    def _on_sent(self, fut: Any, topic: str, key: bytes | None = None, value: bytes | None = None,
                 alone: bool = False) -> None:
        """Any other send (join records, user-state, dead letters) that fails stops the worker:
        its source offsets must not be committed, and a restart replays from them. A dead
        letter the broker refuses for its size is sent again alone, and dropped (logged) if
        refused alone."""
        if fut.cancelled() or fut.exception() is None:
            return
        exc = fut.exception()
        if topic == self.dead_letters.topic and refused_for_size(exc):
            if not alone:
                self._alone.append((topic, key, value, lambda f: self._on_sent(f, topic, key, value, alone=True)))
                return
            self.metrics.send_failures.labels(topic).inc()
            log.error("the broker refused a dead letter of %d bytes sent alone (over the max.message.bytes of %s): "
                      "%s; it is dropped", message_size(key, value), topic, exc)
            return
        self.metrics.send_failures.labels(topic).inc()
        if refused_for_size(exc):
            log.error("the broker refused a message to %s for its size (%s): SHELFQ_STREAMS_MAX_MESSAGE_BYTES (%d) "
                      "must be at most the topic's max.message.bytes; stopping the worker",
                      topic, exc, self.max_message_bytes)
        else:
            log.error("a message to %s was not delivered (%s); stopping the worker", topic, exc)
        asyncio.ensure_future(self.app.crash(exc))
