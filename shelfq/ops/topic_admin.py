"""Apply the topic definitions of ``contracts.topics`` to a cluster, or check them.

``ensure_topics`` creates what is missing and sets drifted configs (safe to change in place);
partition counts and replication factors it reports but never changes, since adding partitions
would move users to other partitions and break the co-partitioning of the user-keyed topics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from shelfq.contracts.errors import ShelfqError
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import ActualTopic, TopicSpec, topic_drift, topic_specs

TIMEOUT_S = 30.0
UNREACHABLE_S = 10.0  # every broker refusing connections this long: give up early
_FATAL_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}


@dataclass
class TopicReport:
    """What ``ensure_topics`` found and did."""

    created: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return (
            [f"created      {name}" for name in self.created]
            + [f"reconfigured {change}" for change in self.reconfigured]
            + [f"drift        {d}" for d in self.drift]
        )


def describe_topics(admin: AdminClient, specs: list[TopicSpec]) -> dict[str, ActualTopic | None]:
    """What the cluster has for each spec's topic (None where the topic does not exist)."""
    metadata = _metadata(admin)
    present = [s for s in specs if s.name in metadata and metadata[s.name].error is None]
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in present]
    configs = {}
    for resource, future in (admin.describe_configs(resources) if resources else {}).items():
        entries = future.result(timeout=TIMEOUT_S)
        configs[resource.name] = {name: entry.value for name, entry in entries.items()}
    actual: dict[str, ActualTopic | None] = {s.name: None for s in specs}
    for s in present:
        partitions = metadata[s.name].partitions
        replicas = len(partitions[0].replicas) if partitions else 0
        actual[s.name] = ActualTopic(len(partitions), replicas, configs[s.name])
    return actual


def check_topics(settings: Settings) -> list[str]:
    """Every difference between the definitions and the cluster; empty when they agree."""
    specs = list(topic_specs(settings).values())
    actual = describe_topics(_admin(settings), specs)
    return [line for s in specs for line in topic_drift(s, actual[s.name])]


def ensure_topics(settings: Settings) -> TopicReport:
    """Create missing topics, fix drifted configs, and report drift that needs a person."""
    admin = _admin(settings)
    specs = list(topic_specs(settings).values())
    actual = describe_topics(admin, specs)
    report = TopicReport()

    missing = [s for s in specs if actual[s.name] is None]
    if missing:
        new = [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=dict(s.config))
            for s in missing
        ]
        for name, future in admin.create_topics(new, request_timeout=TIMEOUT_S).items():
            try:
                future.result(timeout=TIMEOUT_S)
                report.created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # a concurrent create won the race
                    raise ShelfqError(f"could not create {name}: {exc.args[0].str()}") from None
        _wait_until_served(admin, [s.name for s in missing])

    for s in specs:
        have = actual[s.name]
        if have is None:
            continue
        changes = {k: v for k, v in s.config.items() if have.config.get(k) != v}
        if changes:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in changes.items()]
            resource = ConfigResource(ResourceType.TOPIC, s.name, incremental_configs=entries)
            for future in admin.incremental_alter_configs([resource]).values():
                future.result(timeout=TIMEOUT_S)
            report.reconfigured += [f"{s.name}: {k} {have.config.get(k)} -> {v}" for k, v in changes.items()]
        fixed = ActualTopic(have.partitions, have.replication_factor, {**have.config, **changes})
        report.drift += topic_drift(s, fixed)
    return report


def _wait_until_served(admin: AdminClient, names: list[str]) -> None:
    """Return once the broker's metadata shows every topic in ``names`` with a leader for each
    partition. A create returns when the controller has the topic; the broker serves it a
    moment later, longer on a busy cluster, and a client that asks in between is told the topic
    does not exist (seen when tests ran beside each other)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        metadata = _metadata(admin)
        pending = [n for n in names if n not in metadata or metadata[n].error is not None
                   or not metadata[n].partitions or any(p.leader < 0 for p in metadata[n].partitions.values())]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ShelfqError(f"created, but not served after {TIMEOUT_S:.0f} s: {', '.join(pending)}")
        time.sleep(0.1)


def delete_topics(settings: Settings, names: list[str]) -> None:
    """Delete topics by full name (tests use it to clean up their prefixed topics)."""
    admin = _admin(settings)
    for future in admin.delete_topics(names, operation_timeout=TIMEOUT_S).values():
        try:
            future.result(timeout=TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise


class _Admin(AdminClient):
    """An AdminClient that remembers client-level errors (authentication, unreachable brokers)
    so a wrong password fails at once with its reason instead of after a timeout."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.errors: list[KafkaError] = []
        # error_cb receives what the log would repeat on every retry; log only the critical.
        conf: dict[str, Any] = {**config, "error_cb": self.errors.append, "log_level": 2}
        super().__init__(conf)


def _admin(settings: Settings) -> _Admin:
    return _Admin(settings.confluent_config())


def _metadata(admin: AdminClient) -> dict:
    start = time.monotonic()
    while True:
        try:
            return admin.list_topics(timeout=1.0).topics
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            errors = getattr(admin, "errors", [])
            fatal = [e for e in errors if e.code() in _FATAL_CODES or e.fatal()]
            if fatal:
                raise ShelfqError(f"Kafka refused the connection: {fatal[-1].str()}") from None
            waited = time.monotonic() - start
            all_down = any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors)
            if waited > TIMEOUT_S or (all_down and waited > UNREACHABLE_S):
                last = errors[-1].str() if errors else exc.args[0].str()
                raise ShelfqError(f"cannot reach Kafka after {waited:.0f}s: {last}") from None
