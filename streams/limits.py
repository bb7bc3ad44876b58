"""How large a message the worker's producer takes, and how to tell a refusal for size.

Faust's producer (aiokafka) refuses a message over ``producer_max_request_size`` inside
``send()``, measured as the record batch that would carry it alone; the broker refuses a
whole record batch over the topic's ``max.message.bytes`` in its acknowledgement. The worker
measures each output the producer's way before it sends it (``message_size``), so an output
too large for the producer is dead-lettered instead of raising out of the flush.

>>> message_size(b"u1", b"x" * 100)
188
>>> message_size(None, None)   # a bare batch header and record
85
>>> from aiokafka.errors import MessageSizeTooLargeError, RequestTimedOutError
>>> refused_for_size(MessageSizeTooLargeError()), refused_for_size(RequestTimedOutError())
(True, False)
"""

from __future__ import annotations

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

#: Faust's default ``producer_max_request_size``.
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
#: The smallest limit the worker accepts: a dead letter without its value still fits.
MIN_MAX_MESSAGE_BYTES = 4096


def message_size(key: bytes | None, value: bytes | None) -> int:
    """Bytes of the record batch that carries this message alone, as aiokafka's producer
    counts them against its ``max_request_size``."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])


def refused_for_size(exc: BaseException | None) -> bool:
    """Whether a send failed because the message (or its batch) was too large: the client's
    own check (raised from ``send``, wrapped by Faust) or the broker's refusal of a batch."""
    while exc is not None:
        if isinstance(exc, (MessageSizeTooLargeError, RecordListTooLargeError)):
            return True
        exc = exc.__cause__
    return False
