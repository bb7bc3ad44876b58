"""Topics as code against the real broker: idempotent creation and drift detection."""

from __future__ import annotations

import os
import subprocess
import sys

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs
from shelfq.ops.topic_admin import check_topics, describe_topics, ensure_topics


def shelfq(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHELFQ_PARTITIONS": str(settings.partitions)}
    return subprocess.run(
        [sys.executable, "-m", "shelfq", *args, "--topic-prefix", settings.topic_prefix],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_created_topics_match_their_definitions(settings: Settings) -> None:
    specs = list(topic_specs(settings).values())
    actual = describe_topics(AdminClient(settings.confluent_config()), specs)
    for spec in specs:
        have = actual[spec.name]
        assert have is not None, spec.name
        assert (have.partitions, have.replication_factor) == (spec.partitions, spec.replication_factor)
        assert {k: have.config[k] for k in spec.config} == dict(spec.config)
    assert actual[settings.topic("models")].config["max.message.bytes"] == str(settings.model_max_bytes)
    assert check_topics(settings) == []


def test_creation_is_idempotent(settings: Settings) -> None:
    report = ensure_topics(settings)
    assert (report.created, report.reconfigured, report.drift) == ([], [], [])


def test_check_lists_drift_and_create_fixes_what_is_safe(settings: Settings) -> None:
    admin = AdminClient(settings.confluent_config())
    items, requests = settings.topic("items"), settings.topic("requests")
    resource = ConfigResource(ResourceType.TOPIC, items, incremental_configs=[
        ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)])
    for f in admin.incremental_alter_configs([resource]).values():
        f.result(timeout=30)
    for f in admin.create_partitions([NewPartitions(requests, settings.partitions + 1)]).values():
        f.result(timeout=30)

    check = shelfq(settings, "topics", "create", "--check")
    assert check.returncode == 1
    assert f"drift  {items}: cleanup.policy is delete, want compact" in check.stdout
    assert f"drift  {requests}: {settings.partitions + 1} partitions, want {settings.partitions}" in check.stdout
    assert check_topics(settings) != [], "--check changes nothing"

    create = shelfq(settings, "topics", "create")
    assert create.returncode == 1
    assert f"reconfigured {items}: cleanup.policy delete -> compact" in create.stdout
    assert "never changed in place" in create.stderr
    assert check_topics(settings) == [f"{requests}: {settings.partitions + 1} partitions, want {settings.partitions}"]


def test_check_reports_missing_topics(base_settings: Settings) -> None:
    fresh = Settings.from_env(topic_prefix="test-never-created.")
    drift = check_topics(fresh)
    assert len(drift) == len(topic_specs(fresh)) and all(d.endswith(": missing") for d in drift)
