"""The learner process: ``transitions`` in, DQN steps, model versions out on ``models``.

Durability rule: offsets are committed only right after a checkpoint that covers every
transition consumed so far (the replay buffer, dedupe window and step count are in it). A
kill -9 therefore rolls the learner back to its last checkpoint and it reads on from exactly
the offsets that checkpoint recorded: no transition is skipped, and none is counted twice
(the steps taken after the checkpoint are lost and taken again). Model versions never repeat:
a restart continues after the highest version found on the ``models`` topic.

One learner per policy: models go out in transactions under the policy's transactional id
(``learner.publisher``), so a second learner started for the policy fences the first, which
stops at its next publish with ``LearnerFenced`` (exit status 1), publishing nothing more and
writing no further checkpoint or commit: what it had read is read again by its successor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from confluent_kafka import Consumer, TopicPartition

from shelfq.contracts.errors import ConfigError, EventError
from shelfq.contracts.events import Item
from shelfq.contracts.kafka import CompactedReader, ReliableProducer, consumed_headers, topic_partitions
from shelfq.contracts.models import ModelHeaders, read_safetensors_index
from shelfq.contracts.outage import BrokerWatch, install
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import ITEMS, MODELS, TRANSITIONS
from shelfq.learner.artifact import model_message
from shelfq.learner.checkpoint import load_checkpoint, load_optimizer, optimizer_tensors, save_checkpoint
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN, StepStats
from shelfq.learner.ingest import Ingest
from shelfq.learner.metrics import LearnerMetrics
from shelfq.learner.publisher import ModelPublisher

log = logging.getLogger("shelfq.learner")
ITEMS_EVERY_S = 1.0
LAG_EVERY_S = 2.0


class RunStats(NamedTuple):
    """What one ``Learner.run`` did."""

    consumed: int
    duplicates: int
    steps: int
    published: int
    seconds: float


class Learner:
    """Consumes transitions, trains, publishes and checkpoints; ``run`` until a stop."""

    def __init__(self, settings: Settings, config: LearnerConfig, *, group_id: str | None = None,
                 metrics: LearnerMetrics | None = None, content: Any = None) -> None:
        if config.content_dim and content is None:
            from shelfq.learner.content import ContentIndex, TitleEmbedder

            embedder = TitleEmbedder()
            if embedder.dim != config.content_dim:
                raise ConfigError(f"learner: content_dim is {config.content_dim} but the title embedder gives {embedder.dim}")
            content = ContentIndex(embedder)
        self.settings, self.config, self.content = settings, config, content
        self.metrics = metrics or LearnerMetrics()
        self.dqn = DQN(config)
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 2) - 1))
        self.models_topic = settings.topic(MODELS)
        self.transitions_topic = settings.topic(TRANSITIONS)
        self.group_id = group_id or f"{settings.topic_prefix}learner-{config.policy}"
        self.offsets: dict[tuple[str, int], int] = {}  # next offset per partition, of what was consumed
        self._committed: dict[tuple[str, int], int] = {}
        self._ingest: Ingest | None = None
        self.version = 0
        self._restore()
        self.producer = ReliableProducer(settings)  # dead letters; models go through self.models
        #: Waits out a broker outage (``contracts.outage``): started, or running, without one.
        self.watch = install(BrokerWatch("learner", settings.bootstrap, settings.broker_outage_s, self._probe))
        # First: registering the policy's transactional id fences an earlier learner of the
        # policy and settles its open transaction, so the version read next is final.
        self.models = ModelPublisher(settings, config.policy, self.watch)
        published = self.watch.wait_out(lambda: latest_published_version(settings, config.policy),
                                        "reading the models topic")
        if published > self.version:
            log.info("models topic already has %s version %d (after the checkpoint); continuing after it",
                     config.policy, published)
            self.version = published
        self.items = self.watch.wait_out(lambda: CompactedReader(settings, "learner", ITEMS, producer=self.producer),
                                         "reading items")
        self.metrics.model_version.set(self.version)
        self._last_publish = self._last_checkpoint = time.monotonic()
        self._steps_at_publish = self.dqn.step
        self._next_items = self._next_lag = 0.0
        self.last_stats: StepStats | None = None
        self.first_consumed_at: float | None = None  # perf_counter() of the first transition
        self.train_done_at: float | None = None  # perf_counter() after the latest step

    # -- the loop ----------------------------------------------------------------------------

    def run(self, max_seconds: float | None = None, max_transitions: int | None = None,
            max_steps: int | None = None, stop: threading.Event | None = None) -> RunStats:
        """Train until ``stop`` is set or a limit is reached; then checkpoint, commit, publish."""
        started = time.monotonic()
        consumed = duplicates = published = 0
        steps_before = self.dqn.step
        stop = stop or threading.Event()
        ingest = self._ingest = self._start_ingest(max_transitions)
        try:
            while not stop.is_set():
                now = time.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                if max_steps is not None and self.dqn.step - steps_before >= max_steps:
                    break
                if max_transitions is not None and consumed >= max_transitions and not self.dqn.due():
                    break
                self.watch.check()  # raises once the broker was away for longer than the bound
                if now >= self._next_items:
                    self._read_items()
                    self._next_items = now + ITEMS_EVERY_S
                batch = ingest.get(timeout=0 if self.dqn.due() else 0.2)
                if batch is not None:
                    n = len(batch.ids)
                    if n and self.first_consumed_at is None:
                        self.first_consumed_at = time.perf_counter()
                    new = self.dqn.add_rows(batch.rows, batch.ids, batch.slates, batch.actions)
                    self.offsets.update(batch.consumed)
                    consumed += n
                    duplicates += n - new
                    self.metrics.transitions.labels("new").inc(new)
                    self.metrics.transitions.labels("duplicate").inc(n - new)
                    if batch.skipped:  # another experiment arm's (config.arm)
                        self.metrics.transitions.labels("skipped").inc(batch.skipped)
                # One step per turn: what has arrived is taken in first, so a busy stream sets
                # the pace (about one pass per transition) and a quiet one gets up to
                # replay_ratio passes, as fast as the device takes them.
                if self.dqn.due():
                    self._train_one()
                if self._publish_due():
                    self.publish()
                    published += 1
                if time.monotonic() - self._last_checkpoint >= self.config.checkpoint_every_s:
                    self.checkpoint()
                if now >= self._next_lag:
                    self._report_lag()
                    self._next_lag = now + LAG_EVERY_S
        finally:
            try:
                # A fenced learner's successor reads on from the committed offsets: what this
                # one read since is read again there rather than kept in a replay nobody serves.
                if not self.models.fenced:
                    self.checkpoint()  # and commit through the child, before it goes
            finally:
                ingest.halt()
        if self.dqn.step > self._steps_at_publish:
            self.publish()
            published += 1
        return RunStats(consumed, duplicates, self.dqn.step - steps_before, published, time.monotonic() - started)

    def _start_ingest(self, limit: int | None) -> Ingest:
        c = self.config
        return Ingest({
            "settings": self.settings.to_plain(), "group_id": self.group_id,
            "offsets": [[t, p, o] for (t, p), o in self.offsets.items()],
            "features": {"hash_buckets": c.hash_buckets, "history_length": c.history_length,
                         "context_buckets": c.context_buckets, "slate_width": c.slate_size},
            "consumer": {"fetch.max.bytes": 64 << 20, "queued.max.messages.kbytes": 256 << 10,
                         "session.timeout.ms": int(c.session_timeout_s * 1000), "heartbeat.interval.ms": 3000},
            "arm": c.arm,  # the child skips other arms' transitions as it decodes
        }, c.batch_size, limit)

    def close(self) -> None:
        self.items.close()
        self.producer.flush()
        self.models.close()

    def _probe(self) -> None:
        """Raises unless the broker answers a metadata request (``BrokerWatch``)."""
        self.producer.probe_broker(self.models_topic, timeout=2)

    # -- pieces ------------------------------------------------------------------------------

    def _train_one(self) -> None:
        t0 = time.perf_counter()
        stats = self.dqn.train_step(self.dqn.sample())
        self.metrics.step_time.observe(time.perf_counter() - t0)
        self.metrics.steps.inc()
        self.metrics.loss.set(stats.loss)
        self.metrics.td_error.set(stats.td_error)
        self.metrics.mean_q.set(stats.mean_q)
        self.last_stats = stats
        self.train_done_at = time.perf_counter()

    def _publish_due(self) -> bool:
        if self.dqn.step == self._steps_at_publish:
            return False  # nothing new to publish
        return (self.dqn.step - self._steps_at_publish >= self.config.publish_every_steps
                or time.monotonic() - self._last_publish >= self.config.publish_every_s)

    def publish(self) -> ModelHeaders:
        """Send the online network as the next model version and wait until the broker holds
        it committed (while the broker is away, up to ``broker_outage_s``). Raises
        ``LearnerFenced`` once another learner of the policy took over."""
        value, headers = model_message(self.dqn.online, self.config, self.version + 1,
                                       extra={"step": self.dqn.step})
        self.models.publish(self.models_topic, value, self.config.policy, headers.to_headers())
        self.version += 1
        self._last_publish, self._steps_at_publish = time.monotonic(), self.dqn.step
        self.metrics.model_version.set(self.version)
        self.metrics.last_publish.set(time.time())
        log.info("published %s version %d (step %d, %d bytes)", self.config.policy, self.version, self.dqn.step, len(value))
        return headers

    def checkpoint(self) -> Path:
        """Write a checkpoint of everything consumed so far, then commit those offsets."""
        d = self.dqn
        tensors = {**{f"online.{k}": v for k, v in d.online.state_dict().items()},
                   **{f"target.{k}": v for k, v in d.target.state_dict().items()}}
        optim, optim_meta = optimizer_tensors(d.optimizer)
        tensors.update(optim)
        ids, scores = d.catalog.state()
        arrays = {f"replay.{k}": v for k, v in d.replay.state_dict().items()}
        arrays["catalog.scores"] = scores
        state = {
            "step": d.step, "version": self.version, "network": self.config.network(),
            "offsets": [[t, p, o] for (t, p), o in sorted(self.offsets.items())],
            "dedupe": d.dedupe.keys(), "catalog": ids, "credit": d.credit, "optimizer": optim_meta,
        }
        path = save_checkpoint(self.config.checkpoint_dir, tensors, arrays, state)
        # Only now, and exactly the offsets the checkpoint holds (ingestion may have read on).
        committed = {tp: o for tp, o in self.offsets.items() if self._committed.get(tp) != o}
        if self._ingest is not None:  # the child waits out an outage, up to the same bound
            self._ingest.commit(committed, timeout=self.settings.broker_outage_s + 60.0)
        self._committed.update(committed)
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        return path

    def _restore(self) -> None:
        ck = load_checkpoint(self.config.checkpoint_dir)
        if ck is None:
            return
        # Checkpoints from before SlateQ were item-wise and did not name an objective, and those
        # from before item features knew items by their ids alone.
        if {"objective": "item", "item_features": False, "affinity": False, "next_clicks": 0,
                "next_click_prior": False,
                **ck.state["network"]} != self.config.network():
            raise ConfigError(f"checkpoint {ck.path} was written for network settings {ck.state['network']}, "
                              f"not {self.config.network()}; use those settings or another checkpoint_dir")
        d = self.dqn
        d.online.load_state_dict({k[7:]: v for k, v in ck.tensors.items() if k.startswith("online.")})
        d.target.load_state_dict({k[7:]: v for k, v in ck.tensors.items() if k.startswith("target.")})
        if d.next_clicks is not None:  # the table's master copy, from the weights that carry it
            d.next_clicks.load(d.online.next_click_rows.cpu().numpy(), d.online.next_click_counts.cpu().numpy())
        load_optimizer(d.optimizer, ck.tensors, ck.state["optimizer"])
        d.replay.load_state_dict({k[7:]: v for k, v in ck.arrays.items() if k.startswith("replay.")},
                                 clicks_required=self.config.objective == "slateq")
        d.catalog.load(ck.state["catalog"], ck.arrays["catalog.scores"])
        d.dedupe.load(ck.state["dedupe"])
        d.step, d.credit = int(ck.state["step"]), float(ck.state["credit"])
        self.version = int(ck.state["version"])
        self.offsets = {(t, p): o for t, p, o in ck.state["offsets"]}
        log.info("restored %s: step %d, version %d, %d transitions in replay", ck.path, d.step, self.version, len(d.replay))

    def _read_items(self) -> None:
        items: list[Item] = []
        for r in self.items.poll(timeout=0, max_messages=5000):
            if r.event is None:
                if r.key is not None:
                    self.dqn.catalog.remove(r.key)
                continue
            item = cast(Item, r.event)  # the items reader decodes Items only
            self.dqn.catalog.add(item.item_id)
            items.append(item)
        self.dqn.set_items(items)
        if items and self.content is not None:
            ids, vectors = self.content.vectors(items)
            self.dqn.set_content(ids, vectors)
        self.metrics.items.set(len(self.dqn.catalog))

    def _report_lag(self) -> None:
        if self._ingest is not None:
            self.metrics.consumer.set_lag(self._ingest.lag)
            self.metrics.consumer.sync_dead_letters(self._ingest.dead_letters)
        self.metrics.replay_size.set(len(self.dqn.replay))


def latest_published_version(settings: Settings, policy: str, timeout: float = 10.0) -> int:
    """The highest version of ``policy`` on the models topic (0 if none), reading back from
    the end in growing steps. Messages whose headers or safetensors table are corrupt do not
    count: they were never a model anyone could load."""
    consumer = Consumer(settings.confluent_config(**{
        "group.id": f"{settings.topic_prefix}learner-version-probe", "enable.auto.commit": False,
        "isolation.level": "read_committed",  # a fenced learner's aborted model is no version
        "enable.partition.eof": True, "fetch.max.bytes": settings.model_max_bytes + (1 << 16),
        "max.partition.fetch.bytes": settings.model_max_bytes + (1 << 16)}))
    topic = settings.topic(MODELS)
    try:
        best = 0
        for partition in topic_partitions(consumer, topic, timeout):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            back = 16
            end = high
            while end > low:
                start = max(low, end - back)
                found = _max_version(consumer, TopicPartition(topic, partition, start), end, policy, timeout)
                if found is not None:
                    best = max(best, found)
                    break
                end, back = start, back * 4
        return best
    finally:
        consumer.close()


def _max_version(consumer: Consumer, tp: TopicPartition, end: int, policy: str, timeout: float) -> int | None:
    consumer.assign([tp])
    best: int | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == -191:  # _PARTITION_EOF
                break
            continue
        if msg.key() == policy.encode():
            try:
                headers = ModelHeaders.from_headers(consumed_headers(msg))
                read_safetensors_index(msg.value())
            except EventError:
                pass  # a corrupt message is not a version to continue after
            else:
                best = max(best or 0, headers.version)
        offset = msg.offset()
        assert offset is not None  # a consumed message has one
        if offset + 1 >= end:
            break
    return best

