"""The Faust worker around the pure join: ``create_app(settings, config)`` builds it.

Faust's and aiokafka's private members are reached through ``streams.faust_internals`` only.

One agent reads slates, impressions and feedback (co-partitioned by user_id) in partition
order and feeds ``streams.join.Join``; a timer closes the windows of quiet partitions on
wall-clock time and reads the backlog. ``JoinWorker`` is the composition of the worker's
concerns, one module each:

- ``streams.ownership``: rebalance bookkeeping (partitions owned, the assignment's generation,
  where Faust starts delivering each partition);
- ``streams.holes``: each partition's messages once and in offset order, the offsets Faust left
  out read from the broker;
- ``streams.decoding``: raw messages into a batch of events, invalid ones dead-lettered;
- ``streams.dead_letters``: what goes to ``dlq``, cut to fit;
- ``streams.user_state``: user histories (the ``user-state`` topic);
- ``streams.backlog``: unread input told to the join, and stall recovery;
- ``streams.outage``: the broker watch, and watermarks held through an outage;
- ``streams.outbox``: everything sent, in what order, and what the broker's answers mean;
- ``streams.tables``: the tables and their codecs; ``streams.broker_offsets``: the admin reads.

At-least-once: Faust flushes the producer before it commits source offsets, so everything an
event caused is durable before the event is marked consumed. Transitions are recorded as
emitted only once the broker acknowledged them (``Join.acked``); a crash in between re-emits
them with the same transition_id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import faust
from faust.types import TP

from shelfq.contracts.outage import ConnectionNoise
from shelfq.contracts.settings import Settings
from shelfq.streams import faust_internals
from shelfq.streams.backlog import Backlog, StallRecovery
from shelfq.streams.broker_offsets import BrokerOffsets
from shelfq.streams.config import StreamsConfig
from shelfq.streams.decoding import Batch, Decoder
from shelfq.streams.gc_tuning import tune_worker_gc
from shelfq.streams.holes import HoleFiller, Message
from shelfq.streams.join import INPUTS, Join
from shelfq.streams.metrics import JoinReport, StreamsMetrics
from shelfq.streams.outage import OutageWatch, WatermarkHold
from shelfq.streams.outbox import Outbox
from shelfq.streams.ownership import Ownership
from shelfq.streams.sequence import HoleReader, HoleUnreadable
from shelfq.streams.tables import JoinTable, declare_tables
from shelfq.streams.user_state import UserHistories

log = logging.getLogger("shelfq.streams")
REPORT_EVERY_S = 2.0

# aiokafka logs each failed connection, metadata update, fetch and coordinator request at
# ERROR, dozens a second while the broker is down: one WARNING a minute (the worker's
# BrokerWatch says when it goes and comes back), each telling the watch.
_AIOKAFKA_NOISE = ConnectionNoise("Unable connect to node", "Unable to update metadata", "Failed fetch messages",
                                  "Group Coordinator Request failed", "Heartbeat session expired",
                                  "marking coordinator dead", "NodeNotReadyError", "Connection refused")
for _name in ("aiokafka.client", "aiokafka.conn", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator"):
    logging.getLogger(_name).addFilter(_AIOKAFKA_NOISE)


def quiet_handlers() -> None:
    """The same filter on the handlers Faust's worker set up (records of aiokafka.client were
    seen to reach them unfiltered in a worker, though not in isolation)."""
    for handler in logging.getLogger().handlers:
        if _AIOKAFKA_NOISE not in handler.filters:
            handler.addFilter(_AIOKAFKA_NOISE)


@dataclass
class JoinWorker:
    """Routes Faust events through the join and its outputs back to Kafka: the composition of
    the worker's concerns (the module docstring names them), and the order in which a batch,
    a flush, a tick and a rebalance go through them."""

    app: faust.App
    settings: Settings
    config: StreamsConfig
    records: JoinTable
    histories: faust.Table
    metrics: StreamsMetrics = field(default_factory=StreamsMetrics)

    def __post_init__(self) -> None:
        s, metrics = self.settings, self.metrics
        self.join = Join(self.config.join, self.records.data)
        self.logical = {s.topic(t): t for t in INPUTS}  # full topic name -> input
        self.records.on_recovered = self.on_recovered
        self.broker = BrokerOffsets(s, self.app.conf.id, self.logical)
        # The partitions owned when the read starts (a snapshot taken under the GIL).
        self.ownership = Ownership(self.app, lambda: self.broker.committed_offsets(self.ownership.partitions))
        # Two readers of offsets Faust did not deliver: one for holes (on the event loop), one
        # for probes of a partition's unread tail (in executor threads). Neither joins a group.
        reader_config = s.confluent_config(**{"group.id": f"{self.app.conf.id}-holes"})
        self.holes = HoleFiller(self.app, self.ownership, HoleReader(reader_config), metrics)
        self.user_state = UserHistories(self.histories, self.config.join.history_length)
        self.outbox = Outbox(self.app, s, self.config.max_message_bytes, self.join, self.records, self.user_state,
                             self.ownership, metrics)
        self.dead_letters = self.outbox.dead_letters
        self.decoder = Decoder(self.logical, s.max_event_bytes, self.dead_letters, metrics)
        #: Waits out a broker outage (``streams.outage``).
        self.outage = OutageWatch(self.app, s.bootstrap, s.broker_outage_s, self.broker.ping)
        self.watch = self.outage.watch
        self.hold = WatermarkHold(self.join.note_backlog, self.logical.values(), self.config.outage_grace_s)
        self.stalls = StallRecovery(self.app, metrics)
        self.backlog = Backlog(self.logical, self.ownership, self.holes.order, self.broker.end_offsets,
                               HoleReader(reader_config, timeout_s=5.0), self.stalls, self.hold, self.watch,
                               self.join.note_backlog, metrics)
        self.report = JoinReport(self.join, metrics, REPORT_EVERY_S)

    @property
    def partitions(self) -> set[int]:
        """The input partitions this worker owns."""
        return self.ownership.partitions

    # -- rebalances ------------------------------------------------------------------------

    def on_recovered(self, partitions: set[int]) -> None:
        """Take up ``partitions``, and learn where Faust starts delivering each of them (in the
        background: awaiting the broker here, inside Faust's recovery, left partitions without
        a committed offset undelivered until a seek)."""
        self.assign(partitions)
        self.ownership.learn_start_offsets()

    def assign(self, partitions: set[int]) -> None:
        """Own exactly ``partitions`` from now on; their records are restored. Until the first
        backlog read of this assignment reaches the join, every input of them counts as unread:
        the join must not take an input Faust has not delivered from yet for idle (issue 14: a
        restarted worker read a partition's slates and feedback ahead of its impressions while
        hole fills kept the first read waiting, and the feedback became orphans)."""
        self._forget(set(range(self.settings.partitions)) - partitions)
        self.ownership.assign(partitions)
        self.join.rebuild(partitions, time.time())
        for partition in partitions:
            self.join.note_backlog(partition, set(INPUTS))
        self.metrics.partitions.set(len(partitions))
        log.info("join owns partitions %s with %d records", sorted(partitions), len(self.join.records))

    def on_revoked(self, partitions: set[int]) -> None:
        """Stop acting for partitions another worker may be about to own; their records stay
        in the table until the assignment's recovery is complete (``assign`` drops those of
        the partitions it leaves out). Kafka's rebalances are eager: ``partitions`` is every
        partition owned, kept ones included, and Faust's recovery restores a partition it
        keeps only from where its last recovery of it stopped, trusting the table to hold
        what came before. Records dropped here were lost for good when their partition came
        straight back: restored at one rebalance, gone at the next (issue 14)."""
        self._forget(partitions)
        self.ownership.revoke(partitions)
        self.join.rebuild(self.partitions, time.time(), drop_others=False)
        self.metrics.partitions.set(len(self.partitions))

    def _forget(self, partitions: set[int]) -> None:
        """Drop what was known of these partitions' read positions: if one comes back, another
        worker may have read on meanwhile, and the group's committed offsets say where."""
        tps = [TP(full, partition) for full in self.logical for partition in partitions]
        self.holes.forget(tps)
        self.backlog.forget(tps)

    # -- batches -----------------------------------------------------------------------------

    async def handle_batch(self, events: Sequence[faust.EventT]) -> None:
        """A batch of Faust's stream, once the assignment's start offsets are known (a first
        delivery past the committed offset is a hole only against them: ``streams.ownership``):
        processed (``on_batch``), flushed, and its holes reported to Faust."""
        await self.ownership.wait_start_offsets()
        self.on_batch(events)
        await self.flush()
        await self.after_flush()

    def on_batch(self, events: Sequence[faust.EventT]) -> None:
        """Process a batch Faust's stream handed over: each message in offset order (holes
        filled, repeats skipped), decoded, then all of them through the join in one
        ``Join.process_batch`` call, which gives what one ``process`` call per event would."""
        try:
            self.process_messages(
                ((m.tp, m.topic, m.partition, m.offset, m.key, m.value,
                  # Emit latency counts from the moment Faust handed the message to the stream,
                  # so the time it waited in the batch buffer is included.
                  m.time_in if m.time_in is not None else time.monotonic())
                 for m in (event.message for event in events)), time.time())
        except HoleUnreadable:
            # Faust must record no ack for this batch: what it caused is not flushed, and its
            # commit could pass the hole. The restart replays from the last batch flushed.
            faust_internals.withhold_acks(event.message for event in events)
            raise

    async def on_records(self, batch: Sequence[tuple[TP, Sequence[Any]]], handed: float) -> list[tuple[TP, int, int]]:
        """The batch consumer's hand-over (``SHELFQ_STREAMS_BATCH_CONSUMER``): each partition's
        fetched records, handed over at monotonic time ``handed`` (where emit latency starts).
        Processed as ``on_batch`` processes Faust's messages, then flushed; returns, per
        partition still owned, the offsets done (``(tp, first, end)``: ``first`` to ``end`` - 1,
        the holes filled or passed included), which the consumer records as acked. A hole the
        broker cannot give stops the worker with nothing acked."""
        await self.ownership.wait_start_offsets()  # where each partition's processing begins
        order = self.holes.order
        before: dict[TP, int | None] = {}
        for tp, _records in batch:
            first = order.next_offset(tp)
            before[tp] = first if first is not None else self.ownership.start_offset(tp)
        try:
            self.process_messages(((tp, r.topic, r.partition, r.offset, r.key, r.value, handed)
                                   for tp, records in batch for r in records), time.time())
        except HoleUnreadable as exc:
            log.error("%s; stopping the worker", exc)
            await self.app.crash(exc)
            return []
        # The acked ranges cover the holes: Faust needs no gap for them (and a gap over acked
        # offsets would repeat them in its acked list).
        self.holes.covered()
        await self.flush()
        done = []
        for tp, records in batch:
            end = order.next_offset(tp)
            if tp.partition in self.partitions and end is not None:  # a partition revoked meanwhile starts afresh
                first = before[tp]
                done.append((tp, records[0].offset if first is None else first, end))
        return done

    def process_messages(self, messages: Iterable[Message], now: float) -> None:
        """``(tp, topic, partition, offset, key, value, handed over)`` of the input topics, at
        wall time ``now``: in offset order per partition (holes read from the broker and
        processed first, repeats skipped), decoded (invalid ones dead-lettered), then joined in
        one ``Join.process_batch`` call. Raises ``HoleUnreadable`` before anything is joined
        if a hole cannot be read."""
        batch, decode = Batch(), self.decoder.decode
        self.holes.in_order(messages, partial(decode, batch))
        self.decoder.count(batch)
        if not batch.events:
            return
        outputs = self.join.process_batch(batch.events, now=now)
        feedback_counter, attribute, outbox = self.metrics.feedback, self.user_state.attribute, self.outbox
        for out, (partition, offset, started) in zip(outputs, batch.origins):
            for fb in out.attributed:  # counted once: duplicates and replays leave history alone
                feedback_counter.labels(fb.event).inc()
                attribute(partition, fb)
            if out.transitions or out.dead_letters:
                outbox.handle(out, started, origin=(partition, offset))
            elif out.writes:
                outbox.write_records(out.writes)

    async def flush(self) -> None:
        """Send everything gathered so far to the producer (``streams.outbox``)."""
        await self.outbox.flush()

    async def after_flush(self) -> None:
        """Tell Faust the holes processed are done, now that what they caused is with the
        producer (``streams.holes``)."""
        await self.holes.after_flush()

    # -- the clock ---------------------------------------------------------------------------

    def on_tick(self, now: float | None = None) -> None:
        """Close the windows of every owned partition that the clock (``now``, by default the
        wall clock) has passed, and refresh the gauges every ``REPORT_EVERY_S``."""
        started, now = time.monotonic(), time.time() if now is None else now
        for partition in sorted(self.partitions):
            self.outbox.handle(self.join.tick(partition, now), started)
        self.report.maybe_report(now)

    async def refresh_backlog(self) -> None:
        """Tell the join which inputs have unread messages (``streams.backlog``)."""
        await self.backlog.refresh()

    def watch_broker(self) -> None:
        """While the broker may be away, ask it whether it is back (``streams.outage``)."""
        self.outage.check()

    def hold_watermarks(self) -> None:
        """The broker cannot say what is unread: hold every watermark (``streams.outage``)."""
        self.hold.hold(self.partitions)

    def keep_holding(self) -> None:
        """Within ``outage_grace_s`` of an outage, hold the watermarks still."""
        self.hold.keep_holding(self.partitions)

    def close(self) -> None:
        self.holes.reader.close()
        self.backlog.probe.close()
        self.broker.close()


#: Where Faust keeps its data directory (empty: the tables are in memory); Faust fills in the app id.
FAUST_DATADIR = os.path.join(tempfile.gettempdir(), "shelfq-faust-{conf.id}-data")


def create_app(settings: Settings, config: StreamsConfig) -> tuple[faust.App, JoinWorker]:
    """Build the Faust app and its worker logic for these settings (nothing runs yet)."""
    app = faust.App(
        f"{settings.topic_prefix}streams",
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        # Faust makes a data directory even for in-memory tables; keep it out of the cwd.
        datadir=FAUST_DATADIR,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=0,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Outputs wait for a broker that is away for as long as the worker waits for it.
        producer_request_timeout=max(1200.0, settings.broker_outage_s + 60.0),
        # The worker measures every output against this before it sends (streams.limits).
        producer_max_request_size=config.max_message_bytes,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        broker_commit_interval=config.commit_interval_s,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=3.0,
        broker_max_poll_records=config.batch_size,
        consumer_max_fetch_size=config.fetch_partition_bytes,
        stream_processing_timeout=config.stall_timeout_s,
        broker_commit_livelock_soft_timeout=config.stall_timeout_s,
        stream_buffer_maxsize=4 * config.batch_size,
        # Metadata every 10 s instead of 5 min: a worker that joined while its topics were not yet
        # in its metadata snapshot (seen on loaded machines right after the topics were created)
        # assigns itself nothing, and only a metadata refresh shows the change and rejoins.
        consumer_metadata_max_age_ms=10_000,
    )
    # Read committed records only, as the worker's own readers of holes and tails do.
    faust_internals.use_read_committed_consumer(app)
    records, histories = declare_tables(app, settings)
    worker = JoinWorker(app, settings, config, records, histories)
    if config.batch_consumer:  # fetched batches straight to the worker, past Faust's per-message path
        faust_internals.use_batch_consumer(app, worker.on_records, worker.logical)
    source = app.topic(*(settings.topic(t) for t in INPUTS),
                       key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="join")
    async def join_agent(stream: faust.StreamT) -> None:
        # Faust acks a batch's events only when the next batch is asked for, i.e. after the
        # flush: offsets never run ahead of what the batch caused. (Faust's stream has
        # take_events; its StreamT does not declare it.)
        async for batch in cast(faust.Stream, stream).take_events(config.batch_size, within=config.batch_wait_s):
            try:
                await worker.handle_batch(batch)
            except HoleUnreadable as exc:
                log.error("%s; stopping the worker", exc)
                await app.crash(exc)
                return

    @connected(app.on_before_shutdown)
    async def on_shutdown(sender: faust.App, **_: Any) -> None:
        worker.close()

    @connected(app.on_partitions_assigned)
    async def on_assigned(sender: faust.App, assigned: set[TP], **_: Any) -> None:
        # Faust has no setting for either (streams.faust_internals.tune_fetches says why they matter).
        faust_internals.tune_fetches(app, config.fetch_wait_s, config.fetch_min_bytes)

    @connected(app.on_partitions_revoked)
    async def on_revoked(sender: faust.App, revoked: set[TP], **_: Any) -> None:
        worker.on_revoked({tp.partition for tp in revoked if tp.topic in worker.logical})

    @app.timer(interval=config.tick_s)
    async def tick() -> None:
        quiet_handlers()
        worker.watch_broker()
        if worker.watch.down:
            worker.hold_watermarks()
        else:
            await worker.refresh_backlog()
            worker.keep_holding()
        worker.on_tick()
        await worker.flush()

    return app, worker


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[None]])


def connected(signal: Any) -> Callable[[Handler], Handler]:
    """``signal.connect`` as a decorator mypy can check (mode types a signal's handler so that
    no function matches it); Faust calls the handler with the sender and the signal's
    arguments, as it would any connected handler."""
    def connect(handler: Handler) -> Handler:
        signal.connect(handler)
        return handler
    return connect


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The aiokafka translation of the Kafka client settings, as Faust credentials."""
    kw = settings.aiokafka_config()
    protocol = kw.get("security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kw.get("sasl_plain_username"), password=kw.get("sasl_plain_password"),
                                     mechanism=kw.get("sasl_mechanism", "PLAIN"), ssl_context=kw.get("ssl_context"))
    if protocol == "SSL":
        return faust.SSLCredentials(kw["ssl_context"])
    return None


def run_worker(settings: Settings, config: StreamsConfig, max_seconds: float | None = None,
               log_level: str = "warning") -> None:
    """Run a streams worker until SIGINT/SIGTERM (or ``max_seconds``)."""
    try:  # uvloop's event loop cuts Faust's per-event asyncio overhead
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app, worker = create_app(settings, config)
    if config.metrics_port:
        worker.metrics.serve(config.metrics_port, config.metrics_addr)
    faust_worker = faust.Worker(app, loglevel=log_level, quiet=True)
    # aiokafka formats a debug record per message sent when its logger lets DEBUG through.
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, logging.getLevelName(log_level.upper())))
    if max_seconds is not None:
        faust_worker.loop.call_later(max_seconds, os.kill, os.getpid(), signal.SIGTERM)
    tune_worker_gc()  # the join's live records would be walked by every older collection
    faust_worker.execute_from_commandline()

