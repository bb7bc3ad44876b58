"""The learner's one way to write ``models``: a transactional producer whose id belongs to the
policy, so that a second learner of the same policy fences the first.

Kafka lets one producer instance at a time hold a ``transactional.id``: ``init_transactions``
of a new instance bumps the id's epoch and completes or aborts whatever the previous one had
open, and from then on the broker refuses every transactional request of the previous one
(librdkafka raises the fatal ``_FENCED``). Each model is published as a transaction of its
own, and readers of ``models`` read committed records only, so:

- a learner started for a policy that already has one takes over; the old one learns it at
  its next publish, sends nothing more and stops with ``LearnerFenced``;
- the new one reads the highest version on the topic only after ``init_transactions``, when
  nothing of the old one can still be committed, so versions stay strictly increasing.

The id is ``<topic prefix>learner-<policy>`` (``transactional_id``), the same name as the
learner's consumer group: two deployments with their own topic prefixes never fence each
other, and an experiment's arms (each its own ``--policy``) neither.

>>> from shelfq.contracts.settings import Settings
>>> transactional_id(Settings(topic_prefix="shop1."), "dqn-myopic")
'shop1.learner-dqn-myopic'
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from shelfq.contracts.errors import ConfigError, ShelfqError
from shelfq.contracts.outage import LIBRDKAFKA_NOISE, BrokerWatch, ConnectionNoise, report_client_error
from shelfq.contracts.settings import KAFKA_LOGGER, Settings

#: How long one call to the transaction coordinator may block before it is tried again.
CALL_TIMEOUT_S = 30.0
#: The broker's default ``transaction.max.timeout.ms`` (15 minutes): a transaction may not
#: ask for more.
MAX_TRANSACTION_TIMEOUT_MS = 900_000
#: Times a model is sent again in a fresh transaction after one that had to be aborted.
ABORTED_RETRIES = 3

#: The errors by which a producer learns that a newer instance holds its transactional id.
FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
#: What librdkafka logs (ERROR, CRITICAL) when it is fenced; ``LearnerFenced`` says it once.
FENCED_NOISE = ("fenced by a newer instance", "with an old epoch", "Producer fenced")


class LearnerFenced(ShelfqError):
    """Another learner of this policy registered its transactional id after this one."""


def transactional_id(settings: Settings, policy: str) -> str:
    """The transactional id of ``policy``'s learner (see the module docstring)."""
    return f"{settings.topic_prefix}learner-{policy}"


def is_fenced(exc: BaseException) -> bool:
    """Whether ``exc`` says a newer producer instance holds this one's transactional id.

    >>> is_fenced(KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True)))
    True
    >>> is_fenced(KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    False
    """
    return (isinstance(exc, KafkaException) and bool(exc.args) and isinstance(exc.args[0], KafkaError)
            and exc.args[0].code() in FENCED_CODES)


class Drop(logging.Filter):
    """Drops the records that contain one of ``fragments`` (the gate's decisions producer uses it too)."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


#: librdkafka's logger for the models producer: the components' connection-noise rule, and
#: the fencing lines left to ``LearnerFenced``.
_LOGGER = KAFKA_LOGGER.getChild("models")
_LOGGER.addFilter(Drop(*FENCED_NOISE))
_LOGGER.addFilter(ConnectionNoise(*LIBRDKAFKA_NOISE))


class ModelPublisher:
    """Publishes model messages, each in a transaction of its own, under the policy's
    transactional id; raises ``LearnerFenced`` once another learner of the policy took over.

    Construction registers the id (``init_transactions``), which fences any earlier instance:
    build it before reading the highest published version. While the broker is away, each
    call to the coordinator is repeated through ``watch`` (up to ``broker_outage_s``); a
    transaction stays open that long without being aborted by the coordinator, up to the
    broker's ``transaction.max.timeout.ms`` (15 minutes by default).
    """

    def __init__(self, settings: Settings, policy: str, watch: BrokerWatch, **config: Any) -> None:
        self.settings, self.policy, self.watch = settings, policy, watch
        self.transactional_id = transactional_id(settings, policy)
        # A transaction, and the message in it, outlive an outage the learner waits out: a
        # coordinator that aborts a transaction for its age bumps the epoch too, which reads
        # as fencing to the producer.
        timeout_ms = min(MAX_TRANSACTION_TIMEOUT_MS, int(max(300.0, settings.broker_outage_s + 60.0) * 1000))
        conf = {"transactional.id": self.transactional_id, "enable.idempotence": True, "linger.ms": 0,
                "compression.type": "lz4", "transaction.timeout.ms": timeout_ms, "message.timeout.ms": timeout_ms,
                "message.max.bytes": settings.model_max_bytes + (1 << 16), "error_cb": report_client_error}
        conf.update(config)
        self._producer = Producer({**settings.confluent_config(**conf), "logger": _LOGGER})
        self.fenced = False
        self._refused: KafkaError | None = None
        self._guarded(lambda: watch.wait_out(lambda: self._producer.init_transactions(CALL_TIMEOUT_S),
                                             "registering the learner's transactional id"))

    def publish(self, topic: str, value: bytes, key: str, headers: Any) -> None:
        """Send one model message and commit it; returns once the broker holds it committed."""
        self._guarded(lambda: self._publish(topic, value, key, headers))

    def _guarded(self, call: Any) -> Any:
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
                raise ShelfqError(f"learner {self.policy}: the broker refuses the transactional id "
                                  f"{self.transactional_id!r}: give the learner's principal WRITE on it "
                                  "(docs/security.md)") from None
            raise

    def _fenced_error(self, reason: str) -> LearnerFenced:
        return LearnerFenced(
            f"learner {self.policy}: another learner of policy {self.policy!r} took over (it registered the "
            f"transactional id {self.transactional_id!r} after this one{': ' + reason if reason else ''}); "
            "this one publishes nothing more and stops without a further checkpoint or commit. Run one learner per "
            "policy: another learner needs its own --policy")

    def _publish(self, topic: str, value: bytes, key: str, headers: Any) -> None:
        for attempt in range(ABORTED_RETRIES + 1):
            self._refused = None
            self._producer.begin_transaction()
            try:
                self._producer.produce(topic, value, key.encode(), headers=headers, on_delivery=self._report)
            except KafkaException as exc:
                self._abort()
                if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise self._too_large(f"the model is {len(value)} bytes") from None
                raise
            try:
                self.watch.wait_out(lambda: self._producer.commit_transaction(CALL_TIMEOUT_S), "publishing a model")
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError) or not err.txn_requires_abort():
                    raise
                self._abort()
                refused = self._refused
                if refused is not None and refused.code() in (KafkaError.MSG_SIZE_TOO_LARGE,
                                                              KafkaError.RECORD_LIST_TOO_LARGE):
                    raise self._too_large(f"the broker refused {len(value)} bytes: {refused.str()}") from None
                if attempt == ABORTED_RETRIES:
                    raise ShelfqError(f"learner {self.policy}: the broker refused a model "
                                      f"{ABORTED_RETRIES + 1} times: {err.str()}") from None
        raise AssertionError("unreachable")

    def _abort(self) -> None:
        self.watch.wait_out(lambda: self._producer.abort_transaction(CALL_TIMEOUT_S), "aborting a model's transaction")

    def _report(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._refused = err

    def _too_large(self, detail: str) -> ConfigError:
        return ConfigError(f"a model does not fit the models topic: {detail}; raise SHELFQ_MODEL_MAX_BYTES (and run "
                           "`shelfq topics create` to set the topic's max.message.bytes) or make the network smaller")

    def close(self) -> None:
        """Nothing is left queued after a publish; a fenced producer has nothing to flush."""
        if not self.fenced:
            self._producer.flush(10)
