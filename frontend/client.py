"""The client a shop frontend uses to talk to shelfq: typed, keyed sends and awaitable slates.

>>> from shelfq.contracts.events import Feedback
>>> key_of(Feedback(request_id="r1", user_id="u7", session_id="s1", ts=1.0, event="exit"))
'u7'

Events go to their topic keyed as DESIGN.md says (user_id; item_id for the catalog), so one
user's requests, impressions and feedback land in the same partition of every topic. A request
sent with ``ask`` returns a future that the slate for its request_id completes; a background
thread reads ``slates`` from the newest offsets at start, so slates for earlier requests are
never mistaken for new ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from shelfq.contracts.errors import EventError, ShelfqError
from shelfq.contracts.events import Event, Feedback, Impression, Item, Request, Slate, decode, encode
from shelfq.contracts.kafka import ReliableProducer, topic_partitions
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import FEEDBACK, IMPRESSIONS, ITEMS, REQUESTS, SLATES

TOPIC_OF: dict[type[Event], str] = {Request: REQUESTS, Impression: IMPRESSIONS, Feedback: FEEDBACK, Item: ITEMS}


def key_of(event: Event) -> str:
    """The partitioning key of a frontend event: the catalog's item_id, else the user_id."""
    return event.item_id if isinstance(event, Item) else event.user_id  # type: ignore[attr-defined]


class ShopClient:
    """Sends requests, impressions, feedback and catalog items; awaits slates.

    ``send`` is non-blocking (the producer batches); ``flush`` waits until everything is
    acknowledged and raises ``ShelfqError`` if any delivery failed. ``ask`` must be called from
    a running asyncio loop. Use as a context manager, or call ``close``.
    """

    def __init__(self, settings: Settings, *, read_slates: bool = True, **producer_config: Any) -> None:
        self.settings = settings
        self.producer = ReliableProducer(settings, **producer_config)
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[Slate]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.slates_received = 0
        self.slates_unclaimed = 0  # slates for requests nobody here waits for (other frontends', late ones)
        self.slates_invalid = 0  # the streams worker dead-letters these; a frontend just cannot use them
        self._reader: threading.Thread | None = None
        self.failure: str | None = None  # why the slates reader stopped, if it did
        if read_slates:
            self._consumer = self._slates_from_now()
            self._reader = threading.Thread(target=self._read_slates, name="shelfq-slates", daemon=True)
            self._reader.start()

    # -- sends -----------------------------------------------------------------------------

    def send(self, event: Request | Impression | Feedback | Item) -> None:
        """Queue one event on its topic, keyed by user_id (item_id for items)."""
        topic = TOPIC_OF.get(type(event))
        if topic is None:
            raise ShelfqError(f"a frontend sends requests, impressions, feedback and items, not {type(event).__name__}")
        self.producer.produce(self.settings.topic(topic), encode(event), key_of(event))

    def send_all(self, events: Iterable[Request | Impression | Feedback | Item]) -> int:
        n = 0
        for event in events:
            self.send(event)
            n += 1
        return n

    def remove_item(self, item_id: str) -> None:
        """Take an item out of the catalog (a tombstone on the compacted ``items`` topic)."""
        self.producer.produce(self.settings.topic(ITEMS), None, item_id)

    def flush(self, timeout: float = 30.0) -> None:
        self.producer.flush(timeout)

    # -- slates ----------------------------------------------------------------------------

    def ask(self, request: Request) -> asyncio.Future[Slate]:
        """Send ``request`` and return a future for its slate (await it with a timeout:
        ``asyncio.wait_for(client.ask(r), 0.5)``; a timed-out wait forgets the request).

        Items the page will not show (in the cart, out of stock, already on the page) go in
        ``Request(exclude=[...])``: the slate never holds them, and is shorter when too few
        candidates remain. The agent also leaves out what the user already bought
        (``SHELFQ_AGENT_EXCLUDE_SEEN``). With nothing left to show, no slate comes (the
        request is dead-lettered as ``unanswerable``) and the wait times out."""
        if self._reader is None:
            raise ShelfqError("this client was created with read_slates=False")
        if self.failure is not None:
            raise ShelfqError(f"the slates reader stopped: {self.failure}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Slate] = loop.create_future()
        # Registered before the send, so a slate that comes back at once still finds it.
        with self._lock:
            self._waiting[request.request_id] = (loop, future)
        rid = request.request_id
        future.add_done_callback(lambda _f: self._forget(rid))
        try:
            self.send(request)
        except BaseException:
            future.cancel()
            raise
        return future

    async def slate(self, request: Request, timeout: float) -> Slate | None:
        """Send ``request``; its slate, or None if none came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.ask(request), timeout)
        except asyncio.TimeoutError:
            return None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _forget(self, request_id: str) -> None:
        with self._lock:
            self._waiting.pop(request_id, None)

    def _slates_from_now(self) -> Consumer:
        """A group-less consumer of every slates partition from its current end, resolved
        before the first request goes out."""
        topic = self.settings.topic(SLATES)
        consumer = Consumer(self.settings.confluent_config(**{
            "group.id": f"{self.settings.topic_prefix}frontend-slates",  # required; never committed
            "enable.auto.commit": False, "enable.partition.eof": False, "fetch.wait.max.ms": 5}))
        try:
            partitions = topic_partitions(consumer, topic)
        except ShelfqError:
            consumer.close()
            raise
        parts = [TopicPartition(topic, p, _end_offset(consumer, topic, p)) for p in partitions]
        consumer.assign(parts)
        return consumer

    def _read_slates(self) -> None:
        try:
            self._read_slates_until_stopped()
        except Exception as exc:  # noqa: BLE001 - kept and raised by the next ask(), not lost in a thread
            self.failure = f"{type(exc).__name__}: {exc}"
            with self._lock:
                waiting, self._waiting = self._waiting, {}
            for loop, future in waiting.values():
                loop.call_soon_threadsafe(_fail, future, ShelfqError(f"the slates reader stopped: {self.failure}"))

    def _read_slates_until_stopped(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, 0.1):
                if msg.error() is not None:
                    continue  # retriable fetch errors; librdkafka retries by itself
                self.slates_received += 1
                try:
                    slate = decode(msg.value(), Slate, max_bytes=self.settings.max_event_bytes)
                except EventError:
                    self.slates_invalid += 1
                    continue
                with self._lock:
                    waiter = self._waiting.pop(slate.request_id, None)
                if waiter is None:
                    self.slates_unclaimed += 1
                    continue
                loop, future = waiter
                loop.call_soon_threadsafe(_resolve, future, slate)

    def close(self) -> None:
        """Stop reading slates and deliver what is queued (raises if a delivery failed)."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._consumer.close()
            self._reader = None
        self.flush()

    def __enter__(self) -> ShopClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_offset(consumer: Consumer, topic: str, partition: int, timeout: float = 30.0) -> int:
    """The partition's high watermark; retried while the broker is still electing leaders
    (topics created a moment ago answer NOT_LEADER_FOR_PARTITION for a while)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        except KafkaException as exc:
            if exc.args[0].fatal() or time.monotonic() > deadline:  # NOT_LEADER does not say "retriable"
                raise
            time.sleep(0.2)


def _fail(future: asyncio.Future[Slate], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _resolve(future: asyncio.Future[Slate], slate: Slate) -> None:
    if not future.done():  # it may have timed out meanwhile
        future.set_result(slate)
