"""Topics as code: every topic of DESIGN.md with its key, event type, partitions and config.

>>> from shelfq.contracts.settings import Settings
>>> specs = topic_specs(Settings(partitions=3))
>>> specs["items"].config["cleanup.policy"], specs["requests"].partitions
('compact', 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from shelfq.contracts.events import (
    DeadLetter,
    Event,
    Feedback,
    Impression,
    Item,
    Request,
    Slate,
    Transition,
    UserState,
)
from shelfq.contracts.settings import Settings

REQUESTS = "requests"
SLATES = "slates"
IMPRESSIONS = "impressions"
FEEDBACK = "feedback"
ITEMS = "items"
TRANSITIONS = "transitions"
USER_STATE = "user-state"
MODELS = "models"
MODEL_DECISIONS = "model-decisions"
DLQ = "dlq"

#: The event type carried by each topic; ``models`` carries safetensors bytes, not JSON, and
#: ``model-decisions`` its own contract (``contracts.decisions``).
EVENT_OF_TOPIC: Mapping[str, type[Event] | None] = {
    REQUESTS: Request,
    SLATES: Slate,
    IMPRESSIONS: Impression,
    FEEDBACK: Feedback,
    ITEMS: Item,
    TRANSITIONS: Transition,
    USER_STATE: UserState,
    MODELS: None,
    MODEL_DECISIONS: None,
    DLQ: DeadLetter,
}


def event_kind(topic: str) -> type[Event]:
    """The event type ``topic`` carries, for a reader that decodes it; a topic whose values are
    not events (``models``, ``model-decisions``) is a caller's mistake.

    >>> event_kind(FEEDBACK).__name__
    'Feedback'
    >>> event_kind(MODELS)
    Traceback (most recent call last):
    ...
    ValueError: models: its values are not events (see EVENT_OF_TOPIC)
    """
    kind = EVENT_OF_TOPIC[topic]
    if kind is None:
        raise ValueError(f"{topic}: its values are not events (see EVENT_OF_TOPIC)")
    return kind


@dataclass(frozen=True)
class TopicSpec:
    """What one topic must look like on the cluster."""

    logical: str
    name: str
    key: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    """Every topic shelfq uses, by logical name, as the settings shape them."""
    rf = settings.replication_factor
    user_keyed = settings.partitions

    def spec(logical: str, key: str, partitions: int, **config: str) -> TopicSpec:
        conf = {k.replace("_", "."): v for k, v in config.items()}
        return TopicSpec(logical, settings.topic(logical), key, partitions, rf, conf)

    return {
        s.logical: s
        for s in (
            # The broker's clock, not the frontend's: the agent's deadline (agents.deadline).
            spec(REQUESTS, "user_id", user_keyed, cleanup_policy="delete", message_timestamp_type="LogAppendTime"),
            spec(SLATES, "user_id", user_keyed, cleanup_policy="delete"),
            spec(IMPRESSIONS, "user_id", user_keyed, cleanup_policy="delete"),
            spec(FEEDBACK, "user_id", user_keyed, cleanup_policy="delete"),
            spec(TRANSITIONS, "user_id", user_keyed, cleanup_policy="delete"),
            spec(USER_STATE, "user_id", user_keyed, cleanup_policy="compact"),
            spec(ITEMS, "item_id", 3, cleanup_policy="compact"),
            spec(
                MODELS,
                "policy name",
                1,
                cleanup_policy="compact",
                max_message_bytes=str(settings.model_max_bytes),
            ),
            # The serving version per policy (contracts.decisions): the latest decision is the state.
            spec(MODEL_DECISIONS, "policy name", 1, cleanup_policy="compact"),
            spec(DLQ, "original key", 1, cleanup_policy="delete"),
        )
    }


class ActualTopic(NamedTuple):
    """What the cluster reports for one topic."""

    partitions: int
    replication_factor: int
    config: Mapping[str, str]


def topic_drift(spec: TopicSpec, actual: ActualTopic | None) -> list[str]:
    """The differences between a definition and the topic on the cluster, one line each.

    >>> s = TopicSpec("items", "shelfq.items", "item_id", 3, 1, {"cleanup.policy": "compact"})
    >>> topic_drift(s, ActualTopic(3, 1, {"cleanup.policy": "delete"}))
    ['shelfq.items: cleanup.policy is delete, want compact']
    >>> topic_drift(s, None)
    ['shelfq.items: missing']
    """
    if actual is None:
        return [f"{spec.name}: missing"]
    drift = []
    if actual.partitions != spec.partitions:
        drift.append(f"{spec.name}: {actual.partitions} partitions, want {spec.partitions}")
    if actual.replication_factor != spec.replication_factor:
        drift.append(
            f"{spec.name}: replication factor {actual.replication_factor}, want {spec.replication_factor}"
        )
    for key, want in spec.config.items():
        have = actual.config.get(key)
        if have != want:
            drift.append(f"{spec.name}: {key} is {have}, want {want}")
    return drift
