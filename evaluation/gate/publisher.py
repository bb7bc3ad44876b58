"""The gate's one way to write ``model-decisions``: each decision in a transaction of its own,
under its policy's transactional id, so that one gate at a time writes a policy's decisions.

It works as the learner's models do (``learner.publisher``): a gate started for a policy
registers ``<topic prefix>gate-<policy>`` (``init_transactions``), which fences any earlier
gate of the policy and completes or aborts what that one had open. The earlier gate learns it
at its next decision, writes nothing more and stops with ``GateFenced``; the new one reads the
decisions only after registering, when nothing of the old one can still be committed.

Every reader of the topic reads committed records only (``contracts.decisions.read_decisions``,
the agents' ``ModelWatcher``), so a decision is there whole or not at all: one whose commit
waited out a broker outage is there, once, when the broker is back; one that a stop (or a
crash) cut short is not there, and the next gate decides it again.

>>> from shelfq.contracts.settings import Settings
>>> transactional_id(Settings(topic_prefix="shop1."), "dqn-a")
'shop1.gate-dqn-a'
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from shelfq.contracts.errors import ShelfqError
from shelfq.contracts.outage import LIBRDKAFKA_NOISE, BrokerWatch, ConnectionNoise, is_transient, report_client_error
from shelfq.contracts.settings import KAFKA_LOGGER, Settings
from shelfq.learner.publisher import ABORTED_RETRIES, FENCED_NOISE, MAX_TRANSACTION_TIMEOUT_MS, Drop, is_fenced

#: How long one call to the transaction coordinator may block before it is tried again: a
#: decision is a few kilobytes, and a stop is noticed between calls.
CALL_TIMEOUT_S = 5.0
T = TypeVar("T")


class GateFenced(ShelfqError):
    """Another gate of this policy registered its transactional id after this one."""


def transactional_id(settings: Settings, policy: str) -> str:
    """The transactional id of ``policy``'s gate (see the module docstring)."""
    return f"{settings.topic_prefix}gate-{policy}"


#: librdkafka's logger for the decisions producers: the components' connection-noise rule,
#: and the fencing lines left to ``GateFenced``.
_LOGGER = KAFKA_LOGGER.getChild("decisions")
_LOGGER.addFilter(Drop(*FENCED_NOISE))
_LOGGER.addFilter(ConnectionNoise(*LIBRDKAFKA_NOISE))


class DecisionPublisher:
    """Writes one policy's decisions, each in a transaction of its own; raises ``GateFenced``
    once another gate of the policy took over. Construction registers the transactional id;
    while the broker is away every call to the coordinator is repeated through ``watch`` (up
    to ``broker_outage_s``, the transaction's timeout too)."""

    def __init__(self, settings: Settings, policy: str, watch: BrokerWatch) -> None:
        self.policy, self.watch = policy, watch
        self.transactional_id = transactional_id(settings, policy)
        timeout_ms = min(MAX_TRANSACTION_TIMEOUT_MS, int(max(300.0, settings.broker_outage_s + 60.0) * 1000))
        conf = {"transactional.id": self.transactional_id, "enable.idempotence": True, "linger.ms": 0,
                "transaction.timeout.ms": timeout_ms, "message.timeout.ms": timeout_ms,
                "error_cb": report_client_error}
        self._producer = Producer({**settings.confluent_config(**conf), "logger": _LOGGER})
        self.fenced = False
        self.open = False  # a transaction begun and neither committed nor aborted
        self._guarded(lambda: watch.wait_out(lambda: self._producer.init_transactions(CALL_TIMEOUT_S),
                                             "registering the gate's transactional id"))

    def publish(self, topic: str, value: bytes, stop: threading.Event | None = None) -> bool:
        """Write one decision and commit it. True once the broker holds it committed; False
        when ``stop`` ended the wait for an absent broker: its record is dropped, so it is read
        whole (had the broker committed it already) or not at all, and this publisher is done
        (the gate stops; the next one reads which, and decides again if need be)."""
        return self._guarded(lambda: self._publish(topic, value, stop))

    def _guarded(self, call: Callable[[], T]) -> T:
        if self.fenced:
            raise self._fenced_error("")
        try:
            return call()
        except KafkaException as exc:
            if is_fenced(exc):
                self.fenced = True
                raise self._fenced_error(exc.args[0].str()) from None
            if exc.args and isinstance(exc.args[0], KafkaError) and \
                    exc.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                raise ShelfqError(f"gate {self.policy}: the broker refuses the transactional id "
                                  f"{self.transactional_id!r}: give the gate's principal WRITE on it "
                                  "(docs/security.md)") from None
            raise

    def _fenced_error(self, reason: str) -> GateFenced:
        return GateFenced(
            f"gate {self.policy}: another gate of policy {self.policy!r} took over (it registered the transactional "
            f"id {self.transactional_id!r} after this one{': ' + reason if reason else ''}); this one writes no "
            "decision more and stops. Run one gate per policy")

    def _publish(self, topic: str, value: bytes, stop: threading.Event | None) -> bool:
        try:
            self._commit_one(topic, value, stop)
        except KafkaException as exc:
            if stop is None or not stop.is_set() or not is_transient(exc):
                raise
            # Dropped, so that none of it reaches the broker later (this client lives on until
            # the process exits): an open transaction with a record in it would hold back every
            # read_committed reader of the partition until aborted.
            self._producer.purge()
            return False
        return True

    def _commit_one(self, topic: str, value: bytes, stop: threading.Event | None) -> None:
        """The decision in a transaction, committed; one the broker makes abortable (a
        coordinator that moved in a restart, say) is aborted and sent again."""
        for attempt in range(ABORTED_RETRIES + 1):
            self._producer.begin_transaction()
            self.open = True
            self._producer.produce(topic, value, self.policy.encode())
            try:
                self.watch.wait_out(lambda: self._producer.commit_transaction(CALL_TIMEOUT_S), "writing a decision",
                                    stop)
                self.open = False
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError) or not err.txn_requires_abort():
                    raise
                self.watch.wait_out(lambda: self._producer.abort_transaction(CALL_TIMEOUT_S),
                                    "aborting a decision's transaction", stop)
                self.open = False
                if attempt == ABORTED_RETRIES:
                    raise ShelfqError(f"gate {self.policy}: the broker refused a decision "
                                      f"{ABORTED_RETRIES + 1} times: {err.str()}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Nothing is queued after a commit; a fenced producer, or one left with a transaction
        open by a stop, has nothing it could still deliver."""
        if not self.fenced and not self.open:
            self._producer.flush(5)
