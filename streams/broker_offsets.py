"""What the broker says of the worker's inputs, through clients of the worker's own: the
group's committed offsets (``streams.group_offsets``: not through the Admin API, which aborts
the process on a dropped connection), each partition's last stable offset, and the ping the
broker watch uses.

Faust's own view cannot answer these: its fetch position counts messages queued inside Faust
as read, a paused partition has no fresh highwater, and asking its consumer for a position can
block the consumer's thread. Every call here blocks on the broker, so callers on the event loop
run them in an executor thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust.types import TP

from shelfq.contracts.outage import report_client_error
from shelfq.contracts.settings import Settings
from shelfq.streams.group_offsets import GroupOffsets


class BrokerOffsets:
    """Admin reads of the input ``topics`` (full names) for the consumer ``group``; the admin
    client is built at the first call unless one is given."""

    def __init__(self, settings: Settings, group: str, topics: Iterable[str], admin: Any = None) -> None:
        self.settings = settings
        self.group = group
        self.topics = tuple(topics)
        self._admin = admin
        self._group_offsets = GroupOffsets(settings.confluent_config(error_cb=report_client_error), group)

    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.settings.confluent_config(error_cb=report_client_error))
        return self._admin

    def ping(self) -> None:
        """Raises unless the broker answers within 2 s."""
        self.admin().list_topics(timeout=2)

    def end_offsets(self, partitions: Iterable[int]) -> dict[TP, int]:
        """Each input partition's last stable offset: the end of what a read_committed
        consumer can read now (a transaction still open is not input yet)."""
        from confluent_kafka import IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        request = {TopicPartition(full, p): OffsetSpec.latest() for full in self.topics for p in partitions}
        if not request:
            return {}
        futures = self.admin().list_offsets(request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=5)
        return {TP(tp.topic, tp.partition): f.result(timeout=10).offset for tp, f in futures.items()}

    def committed_offsets(self, partitions: Iterable[int]) -> dict[TP, int]:
        """The group's committed offsets of the input topics' ``partitions`` (0 where none: the
        group reads from the beginning there)."""
        from confluent_kafka import TopicPartition

        request = [TopicPartition(full, p) for full in self.topics for p in sorted(partitions)]
        return {TP(*tp): offset for tp, offset in self._group_offsets.read(request, timeout_s=10).items()}

    def close(self) -> None:
        self._group_offsets.close()
