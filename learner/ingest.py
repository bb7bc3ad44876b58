"""Ingestion on a thread of its own: poll ``transitions``, decode, featurize, hand over batches.

Training spends its time inside torch, which releases the GIL, so a second thread that
decodes and featurizes the next transitions overlaps with it on a second core. The queue
between them is bounded (``depth`` batches): a slow trainer stops the poller, memory stays
fixed. The thread owns the consumer, so commits go through it too (``commit``).
"""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple

import numpy as np

from contracts.errors import ShelfqError
from contracts.kafka import EventConsumer
from learner.features import Featurizer
from learner.replay import stack_rows

POLL_TIMEOUT_S = 0.1


class IngestBatch(NamedTuple):
    """Featurized transitions plus what the trainer's bookkeeping needs."""

    rows: dict[str, np.ndarray]
    ids: list[str]
    slates: list[list[str]]
    actions: list[str]
    consumed: dict[tuple[str, int], int]
    """Next offset per (topic, partition) after this batch, dead-lettered messages included."""


class Ingest(threading.Thread):
    def __init__(self, consumer: EventConsumer, features: Featurizer, batch_size: int,
                 limit: int | None = None, depth: int = 4) -> None:
        super().__init__(name="shelfq-ingest", daemon=True)
        self.consumer, self.features, self.batch_size, self.limit = consumer, features, batch_size, limit
        self.batches: queue.Queue[IngestBatch] = queue.Queue(maxsize=depth)
        self.read = 0
        self.error: BaseException | None = None
        self._commits: queue.Queue[tuple[dict[tuple[str, int], int], threading.Event]] = queue.Queue()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._serve_commits()
                want = self.batch_size if self.limit is None else min(self.batch_size, self.limit - self.read)
                if want <= 0:
                    self._halt.wait(POLL_TIMEOUT_S)
                    continue
                before = dict(self.consumer.consumed)
                received = self.consumer.poll(timeout=POLL_TIMEOUT_S, max_messages=want)
                if not received and self.consumer.consumed == before:
                    continue
                self.read += len(received)
                events = [r.event for r in received]
                batch = IngestBatch(stack_rows([self.features.row(t) for t in events]),
                                    [t.transition_id for t in events], [t.slate for t in events],  # type: ignore[union-attr]
                                    [t.action for t in events], dict(self.consumer.consumed))  # type: ignore[union-attr]
                while not self._halt.is_set():
                    try:
                        self.batches.put(batch, timeout=POLL_TIMEOUT_S)
                        break
                    except queue.Full:
                        self._serve_commits()  # the trainer may be waiting for one
        except BaseException as exc:  # noqa: BLE001 - handed to the trainer, which raises it
            self.error = exc
        finally:
            self._serve_commits()

    def commit(self, offsets: dict[tuple[str, int], int], timeout: float = 60.0) -> None:
        """Commit exactly ``offsets`` (after the consumer's dead letters are durable)."""
        if not self.is_alive():
            self.consumer.commit(offsets)
            return
        done = threading.Event()
        self._commits.put((offsets, done))
        if not done.wait(timeout):
            raise ShelfqError(f"offset commit not done after {timeout}s")
        if self.error is not None:
            raise ShelfqError(f"ingestion failed: {self.error}") from self.error

    def halt(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(30)

    def _serve_commits(self) -> None:
        while True:
            try:
                offsets, done = self._commits.get_nowait()
            except queue.Empty:
                return
            try:
                self.consumer.commit(offsets)
            except BaseException as exc:  # noqa: BLE001 - reported through commit()
                self.error = exc
            finally:
                done.set()
