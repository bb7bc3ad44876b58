"""The shared dead-letter path: what a consumer could not use goes to ``dlq``, with a reason.

``dead_letter`` builds the record (pure, so Faust agents can send it their own way);
``DeadLetterWriter`` produces it with confluent-kafka, keyed by the original key.

>>> dl = dead_letter("agent", "invalid", "requests", b"\\xff\\xfe", key=b"u1", partition=0,
...                  offset=7, detail="message: malformed", max_value_bytes=16, ts=1.0)
>>> dl.value, dl.value_encoding, dl.key, dl.offset
('//4=', 'base64', 'u1', 7)
"""

from __future__ import annotations

import base64
import time
from shelfq.contracts.events import DeadLetter, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import DLQ


def dead_letter(
    component: str,
    reason: str,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    detail: str = "",
    max_value_bytes: int = 16 << 10,
    ts: float | None = None,
) -> DeadLetter:
    """A dead-letter record for one message, its value cut to ``max_value_bytes``."""
    size = 0 if value is None else len(value)
    kept = None if value is None else value[:max_value_bytes]
    text, encoding = None, "utf-8"
    if kept is not None:
        try:
            text = kept.decode("utf-8")
        except UnicodeDecodeError:
            # Truncation can split a multi-byte character; only a cut at the very end is text.
            try:
                text = kept[: max(0, len(kept) - 3)].decode("utf-8") if size > max_value_bytes else None
            except UnicodeDecodeError:
                text = None
            if text is None:
                text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    return DeadLetter(
        component=_text(component),
        reason=_text(reason),
        detail=_text(detail),
        topic=_text(topic),
        partition=partition,
        offset=offset,
        key=None if key is None else _text(key),
        value=text,
        value_encoding=encoding,  # type: ignore[arg-type]
        value_bytes=size,
        truncated=size > max_value_bytes,
        ts=time.time() if ts is None else ts,
    )


def _text(text: str) -> str:
    r"""``text`` as UTF-8 can carry it: a lone surrogate (from a parser that keeps them, such as
    Python's json, in a key or an error message) would make the record itself unencodable.

    >>> _text("ok \ud800")
    'ok \\ud800'
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class DeadLetterWriter:
    """Produces dead letters to the ``dlq`` topic, keyed by the original key.

    The first writer built on a producer also takes the messages that producer could not send
    for their size (reason ``too_large``), so they are counted with its other dead letters.

    Delivery is asynchronous: a consumer must ``flush()`` before it commits the offsets of the
    messages it dead-lettered, so none is lost; ``flush`` raises if any delivery failed.
    """

    def __init__(self, settings: Settings, component: str, producer: ReliableProducer | None = None) -> None:
        self.settings = settings
        self.component = component
        self.topic = settings.topic(DLQ)
        self.producer = producer or ReliableProducer(settings, component)
        if self.producer.dead_letters is None:  # where it sends what the broker refuses for size
            self.producer.dead_letters = self
        self.count = 0
        self.by_reason: dict[str, int] = {}  # cumulative, for metrics

    def send(
        self,
        reason: str,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        detail: str = "",
    ) -> DeadLetter:
        """Queue one dead letter and return it."""
        record = dead_letter(
            self.component,
            reason,
            topic,
            value,
            key=key,
            partition=partition,
            offset=offset,
            detail=detail,
            max_value_bytes=self.settings.dlq_max_value_bytes,
        )
        self.producer.produce(self.topic, encode(record), key=key)
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        return record

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued dead letter is acknowledged; raise if one was not."""
        self.producer.flush(timeout)
