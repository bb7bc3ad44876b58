"""The ``model-decisions`` topic: which model version serves each policy, and the figures why.

Key: the policy (its key on ``models``). Value: one ``ModelDecision`` as JSON
(``"schema": "shelfq.model-decision.v1"``). The topic is compacted, so the latest decision of a
policy is the state of its gate: the version every agent replica serves (``serving_version``),
what became of every version decided so far (``versions``) and the versions that served
without being rolled back (``good``, the rollback targets). A restarted agent or gate reads the
topic from the beginning and serves (decides) from the same state. A policy with no decision
serves its newest model, as agents did before the gate.

Written by ``shelfq gate`` (``by="gate"``) and by an operator's ``shelfq models promote`` or
``rollback`` (``by="operator"``).

>>> d = ModelDecision(policy="dqn", serving_version=3, action="promote", version=3, by="gate", ts=1.0,
...                   reason="cleared", good=[1, 3], versions=[VersionStatus(version=3, status="serving", ts=1.0)])
>>> decode_decision(encode_decision(d)) == d
True
>>> decode_decision(b'{"schema":"shelfq.model-decision.v1","policy":"dqn"}')
Traceback (most recent call last):
...
shelfq.contracts.errors.EventError: value: Object missing required field `serving_version`
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from shelfq.contracts.errors import EventError

if TYPE_CHECKING:  # confluent_kafka is imported where it is used: the codec needs no client
    from confluent_kafka import Consumer, TopicPartition

    from shelfq.contracts.settings import Settings

SCHEMA = "shelfq.model-decision.v1"
#: Versions a decision remembers (the newest): what ``shelfq models list`` can show.
MAX_VERSIONS = 200
#: Rollback targets a decision remembers (the newest).
MAX_GOOD = 20

Version = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Action = Literal["adopt", "promote", "hold", "rollback"]
Status = Literal["serving", "retired", "held", "rolled_back"]
By = Literal["gate", "operator"]


class Interval(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An estimate with its 95% interval (None where one unit gives none) and sample size."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int = 0
    ess: float | None = None


class Figures(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a decision rests on: the candidate's and the serving version's off-policy estimates
    on the same window of logged impressions, and the serving version's live reward."""

    window_impressions: int = 0
    positions: int = 0
    margin: float = 0.0
    candidate_snips: Interval | None = None
    candidate_dr: Interval | None = None
    serving_snips: Interval | None = None
    serving_dr: Interval | None = None
    live: Interval | None = None
    below_since_s: float | None = None


class VersionStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What became of one version: ``serving``, ``retired`` (served, then replaced by a newer
    good one; still a rollback target), ``held`` (never served: its estimate did not clear) or
    ``rolled_back``; with its shadow estimates when it had them."""

    version: Version
    status: Status
    ts: float
    snips: Interval | None = None
    dr: Interval | None = None
    reason: str = ""


class ModelDecision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag=SCHEMA, tag_field="schema"):
    """One decision of the gate (or an operator) about a policy's model versions."""

    policy: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    serving_version: Version
    """What every agent serves for this policy from now on."""
    action: Action
    version: Version
    """The version decided about (the one adopted, promoted, held or rolled back)."""
    by: By
    ts: float
    reason: str = ""
    forced: bool = False
    """An operator's promote that skipped the gate's verdict (never the loader's checks)."""
    figures: Figures | None = None
    versions: list[VersionStatus] = []
    good: list[Version] = []
    """Versions that served and were not rolled back, oldest first; the last is serving."""

    def status(self, version: int) -> VersionStatus | None:
        return next((v for v in reversed(self.versions) if v.version == version), None)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ModelDecision)


def encode_decision(decision: ModelDecision) -> bytes:
    return _ENCODER.encode(decision)


def decode_decision(data: bytes | None) -> ModelDecision:
    """The decision in ``data``, or ``EventError`` saying why there is none."""
    if data is None:
        raise EventError("value", "missing", "value is empty (null)")
    try:
        return _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise EventError("value", "invalid", str(exc)) from None
    except RecursionError:
        raise EventError("value", "malformed", "nested too deeply") from None


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 10.0) -> tuple[int, int]:
    """A partition's low and high offsets, asked again while a topic just created has no leader
    yet (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE: retriable) for up to ``timeout``."""
    from confluent_kafka import KafkaError, KafkaException

    settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=timeout)
        except KafkaException as exc:
            if time.monotonic() >= deadline or not (exc.args and (exc.args[0].retriable() or exc.args[0].code() in settling)):
                raise
            time.sleep(0.2)


def read_decisions(settings: Settings, timeout: float = 30.0) -> dict[str, ModelDecision]:
    """The latest valid decision of every policy on ``model-decisions``, read from the
    beginning to the end offsets it had when called (no consumer group, nothing committed)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from shelfq.contracts.kafka import topic_partitions
    from shelfq.contracts.topics import MODEL_DECISIONS

    topic = settings.topic(MODEL_DECISIONS)
    consumer = Consumer(settings.confluent_config(**{
        "group.id": f"{settings.topic_prefix}decisions-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": False, "isolation.level": "read_committed"}))
    out: dict[str, ModelDecision] = {}
    try:
        ends: dict[int, int] = {}
        for p in topic_partitions(consumer, topic, timeout=min(timeout, 10.0)):
            low, high = watermarks(consumer, TopicPartition(topic, p))
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.2):
                key = msg.key()
                if msg.error() is not None or key is None:
                    continue
                apply_message(out, key, msg.value())
            for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
    finally:
        consumer.close()
    return out


def apply_message(state: dict[str, ModelDecision], key: bytes, value: bytes | None) -> ModelDecision | None:
    """Fold one message of the topic into ``state`` (policy -> latest decision); a tombstone
    forgets the policy's decisions, an invalid value is skipped. Returns the decision applied.

    >>> state = {}
    >>> d = ModelDecision(policy="dqn", serving_version=2, action="adopt", version=2, by="gate", ts=1.0)
    >>> apply_message(state, b"dqn", encode_decision(d)) == d, apply_message(state, b"dqn", b"{}")
    (True, None)
    >>> state["dqn"].serving_version
    2
    """
    policy = key.decode("utf-8", errors="replace")
    if value is None:
        state.pop(policy, None)
        return None
    try:
        decision = decode_decision(value)
    except EventError:
        return None
    if decision.policy != policy:
        return None
    state[policy] = decision
    return decision
