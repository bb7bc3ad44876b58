"""The worker's group's committed offsets, read without the Admin API.

The worker asks where its group stands (``JoinWorker.refresh_backlog``: where Faust starts
delivering each input). It used ``AdminClient.list_consumer_group_offsets``, and librdkafka
(2.16.0 and before) aborts the whole process, ``rd_kafka_enq_once_del_source_return:
Assertion `eonce->refcnt > 0' failed``, when such a coordinator-targeted Admin request is
sent on a connection that just dropped: its error path frees the request's enq-once handle,
which the error response enqueued next uses again (librdkafka issues #4605 and #3663, fix
proposed in PR #5397, not released). A broker SIGKILL under the worker hit it, and
``experiments/admin_abort.py`` reproduces it in a few broker restarts. Closing and recreating
the client after an outage would not help: the abort comes as the connection drops.

``Consumer.committed`` asks the same coordinator the same OffsetFetch through the consumer's
own group machinery, not the Admin request path. The consumer here never subscribes or is
assigned anything, so it never joins the group (the worker's Faust consumer is its only
member) and, with auto-commit off, it never commits.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition


class GroupOffsets:
    """Reads ``group``'s committed offsets; thread-safe (reads run in executor threads, close
    comes from the event loop)."""

    def __init__(self, config: dict[str, Any], group: str) -> None:
        self._config = {**config, "group.id": group, "enable.auto.commit": False}
        self._consumer: Any = None
        self._lock = threading.Lock()

    def read(self, partitions: list[TopicPartition], timeout_s: float = 10.0) -> dict[tuple[str, int], int]:
        """Each partition's committed offset, 0 where the group has none (it reads from the
        beginning there). Raises ``KafkaException`` while the coordinator cannot answer."""
        if not partitions:
            return {}
        with self._lock:
            if self._consumer is None:
                self._consumer = Consumer(self._config)
            found = self._consumer.committed(partitions, timeout=timeout_s)
        for tp in found:
            if tp.error is not None:  # this partition's offset is unknown, not absent
                raise KafkaException(tp.error)
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
