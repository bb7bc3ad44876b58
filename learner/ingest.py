"""Ingestion in a process of its own: poll ``transitions``, decode, featurize, hand over rows.

Decoding a transition (JSON with two histories of up to 50 interactions) and featurizing it
costs tens of microseconds of Python; the gradient step costs about as much per transition.
In one process they would take turns on the GIL, so the learner spawns a child that owns the
consumer and does the Python-heavy part on the second core, while the trainer's process only
dedupes, stores and trains.

The pipe between them carries msgpack (never pickle): row arrays as raw bytes plus the ids,
slates and actions the trainer's bookkeeping needs, and the offsets consumed so far. The pipe is
the bound: a slow trainer blocks the child's next send, so memory stays fixed. Commits go back
the other way: the trainer says which offsets its checkpoint holds and the child commits
exactly those, after its dead letters are durable. The child exits when the trainer does, even
after a kill -9 (it watches its parent).

A learner of one experiment arm (``LearnerConfig.arm``) trains on that arm's transitions only.
The child reads every transition's ``arm`` first (a view of that one field: about a third of
the full decode) and leaves the others there: consumed and committed with the rest, counted
as skipped, neither fully decoded nor featurized.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import msgspec
import numpy as np

from shelfq.contracts.errors import ShelfqError
from shelfq.contracts.events import Id, Transition, decode_view, schema_of

if TYPE_CHECKING:
    from shelfq.learner.wire import TransitionView

POLL_TIMEOUT_S = 0.1
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


class IngestBatch(NamedTuple):
    """Featurized transitions plus what the trainer's bookkeeping needs."""

    rows: dict[str, np.ndarray]
    ids: list[str]
    slates: list[list[str]]
    actions: list[str]
    consumed: dict[tuple[str, int], int]
    """Next offset per (topic, partition) after this batch, dead-lettered messages included."""
    skipped: int = 0
    """Transitions of other experiment arms consumed with this batch (not in ``rows``)."""


class Ingest:
    """The trainer's side: start the child, take batches, ask for commits, stop it."""

    def __init__(self, env: dict[str, Any], batch_size: int, limit: int | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs torch threads
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, args=(child, env, batch_size, limit, os.getpid()),
                                 name="shelfq-ingest", daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._pending: list[IngestBatch] = []
        self.error: str | None = None
        self.ready = False
        self.lag: dict[tuple[str, int], int] = {}  # messages not yet consumed, per (topic, partition)
        self.dead_letters: dict[str, int] = {}  # the child's dead letters so far, by reason

    def get(self, timeout: float) -> IngestBatch | None:
        """The next batch, waiting up to ``timeout`` seconds; None if there is none yet."""
        if self._pending:
            return self._pending.pop(0)
        if self._conn.poll(timeout):
            self._receive()
        return self._pending.pop(0) if self._pending else None

    def commit(self, offsets: dict[tuple[str, int], int], timeout: float = 60.0) -> None:
        """Commit exactly ``offsets`` (after the child's dead letters are durable)."""
        if not offsets:
            return
        self._check()
        self._conn.send_bytes(_ENCODER.encode(["commit", [[t, p, o] for (t, p), o in offsets.items()]]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._conn.poll(0.1):
                if self._receive() == "committed":
                    return
            self._check()
        raise ShelfqError(f"offset commit not confirmed after {timeout}s")

    def halt(self) -> None:
        """Stop the child: it leaves the consumer group and exits. Batches still on their way
        are dropped: what the last checkpoint does not hold is read again next time."""
        if self._proc.is_alive():
            try:
                self._conn.send_bytes(_ENCODER.encode(["stop"]))
            except OSError:
                pass
            deadline = time.monotonic() + 30
            while self._proc.is_alive() and time.monotonic() < deadline:
                try:
                    if self._conn.poll(0.1):
                        self._conn.recv_bytes()  # the child may be blocked sending one
                except (EOFError, OSError):
                    break
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()

    def _receive(self) -> str:
        try:
            data = self._conn.recv_bytes()
        except (EOFError, OSError):
            raise ShelfqError(f"the ingestion process exited (code {self._proc.exitcode})") from None
        kind, *body = _DECODER.decode(data)
        if kind == "batch":
            rows, ids, slates, actions, consumed, lag, self.dead_letters, skipped = body
            self.lag = {(t, p): n for t, p, n in lag}
            self._pending.append(IngestBatch(
                {name: np.frombuffer(raw, dtype=dtype).reshape(shape) for name, (dtype, shape, raw) in rows.items()},
                ids, slates, actions, {(t, p): o for t, p, o in consumed}, skipped))
        elif kind == "error":
            self.error = body[0]
            raise ShelfqError(f"ingestion failed: {self.error}")
        elif kind == "ready":
            self.ready = True
        return kind

    def _check(self) -> None:
        if self.error is not None:
            raise ShelfqError(f"ingestion failed: {self.error}")
        if not self._proc.is_alive():
            raise ShelfqError(f"the ingestion process exited (code {self._proc.exitcode})")


class ArmView(msgspec.Struct, tag_field="schema", tag=schema_of(Transition), gc=False):
    """A transition's experiment arm alone: what a learner of one arm reads first."""

    arm: Id | None = None


def arm_filter(arm: str, max_bytes: int) -> Callable[[bytes | None], Any]:
    """A decoder for the learner of one experiment arm: the learner's view of ``arm``'s
    transitions (``learner.wire``), None for the others, read no further than their ``arm``.
    What is not a transition at all fails as ``decode_transition`` fails (a dead letter).

    >>> import msgspec
    >>> from shelfq.contracts.events import encode
    >>> from shelfq.contracts.examples import EXAMPLES
    >>> t, keep = EXAMPLES["transitions"][1], arm_filter("a", 1 << 20)
    >>> keep(encode(msgspec.structs.replace(t, arm="a"))).action, keep(encode(msgspec.structs.replace(t, arm="b"))), keep(encode(t))
    ('sku-3', None, None)
    """
    from shelfq.learner.wire import decode_transition

    def decode(data: bytes | None) -> Any:
        if decode_view(data, ArmView, max_bytes=max_bytes).arm != arm:
            return None
        return decode_transition(data, max_bytes)

    return decode


# -- the child -------------------------------------------------------------------------------


def _child_main(conn: Connection, env: dict[str, Any], batch_size: int, limit: int | None, parent: int) -> None:
    try:
        _Child(conn, env, batch_size, limit, parent).run()
    except Exception as exc:  # noqa: BLE001 - reported to the trainer, which raises it
        try:
            conn.send_bytes(_ENCODER.encode(["error", f"{type(exc).__name__}: {exc}"]))
        except OSError:
            pass


class _Child:
    def __init__(self, conn: Connection, env: dict[str, Any], batch_size: int, limit: int | None, parent: int) -> None:
        from shelfq.contracts.kafka import EventConsumer
        from shelfq.contracts.outage import BrokerWatch, install
        from shelfq.contracts.settings import Settings
        from shelfq.contracts.topics import TRANSITIONS
        from shelfq.learner.features import Featurizer
        from shelfq.learner.wire import decode_transition

        self.conn, self.batch_size, self.limit, self.parent = conn, batch_size, limit, parent
        settings = Settings.from_plain(env["settings"])
        self.start_offsets: dict[tuple[str, int], int] = {(t, p): o for t, p, o in env["offsets"]}
        self.features = Featurizer(**env["features"])
        max_bytes = settings.max_event_bytes
        decoder = (arm_filter(env["arm"], max_bytes) if env.get("arm")
                   else lambda value: decode_transition(value, max_bytes))
        self.consumer = EventConsumer(settings, "learner", env["group_id"], [TRANSITIONS], on_assign=self._on_assign,
                                      decoders={TRANSITIONS: decoder}, **env["consumer"])
        self.read = 0
        topic = settings.topic(TRANSITIONS)
        # The trainer's watch says when the broker goes and comes back; this one waits out the
        # commits and gives up past the same bound (the trainer then reports the error).
        self.watch = install(BrokerWatch("learner ingestion", settings.bootstrap, settings.broker_outage_s,
                                         lambda: self.consumer.probe_broker(topic, timeout=2)))

    def _on_assign(self, partitions: list[Any]) -> None:
        """Read on from what was handed to the trainer (at start: its checkpoint's offsets)."""
        for tp in partitions:
            offset = self.consumer.consumed.get((tp.topic, tp.partition), self.start_offsets.get((tp.topic, tp.partition)))
            if offset is not None:
                tp.offset = offset

    def run(self) -> None:
        self.conn.send_bytes(_ENCODER.encode(["ready"]))
        try:
            while os.getppid() == self.parent:
                self.watch.check()
                if self._serve_requests():
                    return
                want = self.batch_size if self.limit is None else min(self.batch_size, self.limit - self.read)
                if want <= 0:
                    time.sleep(POLL_TIMEOUT_S)
                    continue
                before = dict(self.consumer.consumed)
                received = self.consumer.poll(timeout=POLL_TIMEOUT_S, max_messages=want)
                if not received and self.consumer.consumed == before:
                    continue
                # None: another arm's; the decoder is the TransitionView one (``decoders``)
                events = cast("list[TransitionView]", [r.event for r in received if r.event is not None])
                self.read += len(events)
                rows = self.features.rows(events)
                self.conn.send_bytes(_ENCODER.encode([
                    "batch",
                    {name: [a.dtype.str, list(a.shape), a.tobytes()] for name, a in rows.items()},
                    [t.transition_id for t in events], [t.slate for t in events], [t.action for t in events],
                    [[t, p, o] for (t, p), o in self.consumer.consumed.items()],
                    [[t, p, n] for (t, p), n in self.consumer.lag().items()],
                    self.consumer.dlq.by_reason,
                    len(received) - len(events),
                ]))
        finally:
            self.consumer.close()
            self.consumer.dlq.flush()

    def _serve_requests(self) -> bool:
        """Commits asked for by the trainer; True when it asked us to stop."""
        while self.conn.poll(0):
            kind, *body = _DECODER.decode(self.conn.recv_bytes())
            if kind == "stop":
                return True
            if kind == "commit":
                offsets = {(t, p): o for t, p, o in body[0]}
                self.watch.wait_out(functools.partial(self.consumer.commit_unless_left, offsets),
                                    "committing offsets")
                self.conn.send_bytes(_ENCODER.encode(["committed"]))
        return False

