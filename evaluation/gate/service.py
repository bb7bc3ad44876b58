"""``shelfq gate``: judges each new model version of its policies in shadow and writes every
decision to ``model-decisions``, which every agent replica follows.

The gate reads four topics and keeps nothing of its own (a restart rebuilds it all):

- ``model-decisions`` from the beginning, to the end, before anything else: the state of each
  policy (what serves, what became of every version, the rollback targets); then it follows
  the topic, so an operator's ``shelfq models promote`` or ``rollback`` is its state too;
- ``models`` (``agents.service.ModelWatcher``, as the agents read it): every version loaded and
  checked as an agent would load it;
- ``transitions``, from the tail (about twice the window): the policies' logged impressions
  (``evaluation.gate.window``);
- ``items``: the catalog, which the candidates' slates are drawn from.

Every ``interval_s``, once ``models`` is read to its end, it judges each policy
(``evaluation.gate.judge``) and writes what it decides, each decision in a transaction under
its policy's transactional id (``evaluation.gate.publisher``): a second gate started for a
policy fences the first, which stops at its next decision with ``GateFenced`` (exit status 1).

A broker outage is waited out as the other components do (``contracts.outage``, up to
``broker_outage_s``): a decision whose commit waits for the broker becomes the gate's state
only once committed, and nothing else is judged meanwhile, so none is lost or written twice; a
stop ends that wait, the decision written whole or not at all, for the next gate to decide again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from typing import Any, cast

from confluent_kafka import Consumer, TopicPartition

from shelfq.agents.service import ModelWatcher
from shelfq.contracts.decisions import ModelDecision, encode_decision, read_decisions, watermarks
from shelfq.contracts.errors import EventError
from shelfq.contracts.events import Item, Transition, decode
from shelfq.contracts.kafka import CompactedReader, ReliableProducer, topic_partitions
from shelfq.contracts.outage import BrokerWatch, install, report_client_error
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import ITEMS, MODEL_DECISIONS, TRANSITIONS
from shelfq.evaluation.gate.config import GateConfig
from shelfq.evaluation.gate.judge import Judge
from shelfq.evaluation.gate.metrics import GateMetrics
from shelfq.evaluation.gate.publisher import DecisionPublisher
from shelfq.learner.artifact import LoadedModel

log = logging.getLogger("shelfq.gate")
#: Transitions read back from the tail per impression of the window (a slate of ten, and room).
TAIL_PER_IMPRESSION = 20


class Gate:
    def __init__(self, settings: Settings, config: GateConfig, metrics: GateMetrics | None = None) -> None:
        self.settings, self.config = settings, config
        #: Set by ``run``'s stop: ends the waits for an absent broker (their backoff too).
        self.stop = threading.Event()
        self.decisions_topic = settings.topic(MODEL_DECISIONS)
        self.producer = ReliableProducer(settings, "gate")  # dead letters (of items)
        #: Waits out a broker outage (``contracts.outage``): started, or running, without one.
        self.watch = install(BrokerWatch("gate", settings.bootstrap, settings.broker_outage_s, self._probe,
                                         sleep=lambda s: self.stop.wait(s)))
        # Registering each policy's transactional id fences an earlier gate of the policy and
        # settles what it had open, so the decisions read next are final.
        self.publishers = {p: DecisionPublisher(settings, p, self.watch) for p in config.policy_keys()}
        # The state first: a gate that judged before knowing it would adopt over a decision.
        decisions = self.watch.wait_out(lambda: read_decisions(settings), "reading model-decisions")
        self.judge = Judge(config, metrics, decisions)
        self.metrics = self.judge.metrics
        self.models_read = threading.Event()  # models read to the end offsets of the start
        self.watcher = ModelWatcher(settings, list(self.judge.policies), self._on_model, self._on_rejected,
                                    on_decision=self.judge.note_decision, on_read_to_end=self.models_read.set)
        self.items_reader = self.watch.wait_out(
            lambda: CompactedReader(settings, "gate", ITEMS, producer=self.producer), "reading items")
        self.transitions = self.watch.wait_out(self._tail_consumer, "reading transitions")

    def _tail_consumer(self) -> Consumer:
        topic = self.settings.topic(TRANSITIONS)
        consumer = Consumer(self.settings.confluent_config(**{
            "group.id": f"{self.settings.topic_prefix}gate-{uuid.uuid4().hex[:8]}",  # required; never joined
            "enable.auto.commit": False, "enable.partition.eof": False, "error_cb": report_client_error}))
        partitions = topic_partitions(consumer, topic)
        back = math.ceil(self.config.window * TAIL_PER_IMPRESSION * len(self.judge.policies) / len(partitions))
        assigned = []
        for p in partitions:
            low, high = watermarks(consumer, TopicPartition(topic, p))
            assigned.append(TopicPartition(topic, p, max(low, high - back)))
        consumer.assign(assigned)
        return consumer

    def _on_model(self, model: LoadedModel) -> None:
        self.judge.add_model(model)
        log.info("loaded %s model version %d", model.headers.policy, model.headers.version)

    def _on_rejected(self, reason: EventError, value: Any, key: str, partition: int, offset: int) -> None:
        log.warning("a %s model message at offset %d fails the loader's checks, never a candidate: %s", key, offset, reason)

    def poll(self, timeout: float = 0.2) -> int:
        """Read what has arrived of transitions and items; returns the policies' transitions read."""
        n = 0
        for msg in self.transitions.consume(2000, timeout):
            if msg.error() is not None:
                continue
            try:
                n += self.judge.add_transition(decode(msg.value(), Transition, max_bytes=self.settings.max_event_bytes))
            except EventError:
                continue
        for r in self.items_reader.poll(timeout=0, max_messages=5000):
            if r.event is None:
                self.judge.items.pop(r.key or "", None)
            else:
                item = cast(Item, r.event)  # the items reader decodes Items only
                self.judge.items[item.item_id] = item
        return n

    def judge_all(self, now: float | None = None) -> list[ModelDecision]:
        """One judgement of every policy; writes and returns its decisions."""
        out = []
        for policy in self.judge.policies:
            if self.stop.is_set():
                break
            decision = self.judge.step(policy, now)
            if decision is not None and self.publish(decision):
                out.append(decision)
        return out

    def publish(self, decision: ModelDecision) -> bool:
        """Write ``decision`` and wait until the broker holds it committed (while it is away, up
        to ``broker_outage_s``); then it is the gate's state. False when the stop ended the wait
        (``DecisionPublisher.publish``). Raises ``GateFenced`` once another gate of the policy took over."""
        if not self.publishers[decision.policy].publish(self.decisions_topic, encode_decision(decision), self.stop):
            log.warning("%s: stopped while waiting for the broker to commit %s v%d: it is written whole or not at "
                        "all, and the next gate decides it again if not", decision.policy, decision.action,
                        decision.version)
            return False
        self.judge.record(decision)
        return True

    def run(self, max_seconds: float | None = None, stop: threading.Event | None = None) -> int:
        """Judge every ``interval_s`` until stopped; returns the decisions written."""
        stop = self.stop = stop or self.stop
        started = time.monotonic()
        written, next_judgement = 0, 0.0
        self.watcher.start()
        try:
            while not stop.is_set():
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    break
                self.watch.check()  # raises once the broker was away for longer than the bound
                self.poll()
                if self.models_read.is_set() and time.monotonic() >= next_judgement:
                    written += len(self.judge_all())
                    next_judgement = time.monotonic() + self.config.interval_s
        finally:
            self.watcher.stop()
            self.producer.flush()
        return written

    def close(self) -> None:
        self.transitions.close()
        self.items_reader.close()
        self.producer.flush()
        for publisher in self.publishers.values():
            publisher.close()

    def _probe(self) -> None:
        """Raises unless the broker answers a metadata request (``BrokerWatch``)."""
        self.producer.probe_broker(self.decisions_topic, timeout=2)
