"""Topic definitions and drift detection, without a cluster."""

from __future__ import annotations

from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import USER_STATE, ActualTopic, topic_drift, topic_specs

DESIGN_TOPICS = {"requests", "slates", "impressions", "feedback", "items", "transitions", "user-state", "models",
                 "model-decisions", "dlq"}


def test_every_design_topic_is_defined_with_the_prefix() -> None:
    specs = topic_specs(Settings(topic_prefix="shop1."))
    assert set(specs) == DESIGN_TOPICS
    assert all(s.name == f"shop1.{s.logical}" for s in specs.values())


def test_cleanup_policies_and_model_size_follow_the_design() -> None:
    specs = topic_specs(Settings(model_max_bytes=32 << 20))
    compacted = {name for name, s in specs.items() if s.config["cleanup.policy"] == "compact"}
    assert compacted == {"items", "user-state", "models", "model-decisions"}
    assert specs["models"].config["max.message.bytes"] == str(32 << 20)


def test_user_keyed_topics_are_co_partitioned() -> None:
    specs = topic_specs(Settings(partitions=9))
    user_keyed = [s for s in specs.values() if s.key == "user_id"]
    assert {s.logical for s in user_keyed} >= {"requests", "slates", "impressions", "feedback", USER_STATE}
    assert {s.partitions for s in user_keyed} == {9}


def test_drift_lists_every_difference() -> None:
    spec = topic_specs(Settings())["models"]
    actual = ActualTopic(2, 3, {"cleanup.policy": "delete", "max.message.bytes": "1048588"})
    assert topic_drift(spec, actual) == [
        "shelfq.models: 2 partitions, want 1",
        "shelfq.models: replication factor 3, want 1",
        "shelfq.models: cleanup.policy is delete, want compact",
        f"shelfq.models: max.message.bytes is 1048588, want {64 << 20}",
    ]
    assert topic_drift(spec, ActualTopic(1, 1, dict(spec.config))) == []


class MetadataAfter:
    """A client whose metadata knows a new topic only from the ``known_after``-th request on
    (what a broker does for a moment after the topic is created)."""

    def __init__(self, known_after: int) -> None:
        self.known_after, self.requests = known_after, 0

    def list_topics(self, topic: str, timeout: float):
        from types import SimpleNamespace

        self.requests += 1
        if self.requests < self.known_after:
            meta = SimpleNamespace(error="UNKNOWN_TOPIC_OR_PART", partitions={})
        else:
            meta = SimpleNamespace(error=None, partitions={1: None, 0: None})
        return SimpleNamespace(topics={topic: meta})


def test_a_topic_just_created_is_asked_for_again_until_its_metadata_shows_it() -> None:
    from shelfq.contracts.kafka import topic_partitions

    client = MetadataAfter(known_after=3)
    assert topic_partitions(client, "t", timeout=5) == [0, 1]
    assert client.requests == 3


def test_a_topic_that_stays_unknown_is_a_precise_error() -> None:
    import pytest

    from shelfq.contracts.errors import ShelfqError
    from shelfq.contracts.kafka import topic_partitions

    with pytest.raises(ShelfqError, match=r"topic t is not available: UNKNOWN_TOPIC_OR_PART \(run `shelfq topics create`\)"):
        topic_partitions(MetadataAfter(known_after=10**6), "t", timeout=0.3)


def test_topics_just_created_are_waited_for_until_every_partition_has_a_leader() -> None:
    from types import SimpleNamespace

    from shelfq.ops import topic_admin

    served = SimpleNamespace(error=None, partitions={0: SimpleNamespace(leader=1), 1: SimpleNamespace(leader=1)})
    leaderless = SimpleNamespace(error=None, partitions={0: SimpleNamespace(leader=1), 1: SimpleNamespace(leader=-1)})
    answers = [{}, {"a": leaderless}, {"a": served, "b": served}]

    class Admin:
        asked = 0

        def list_topics(self, timeout: float) -> object:
            self.asked += 1
            return SimpleNamespace(topics=answers[min(self.asked, len(answers)) - 1])

    admin = Admin()
    topic_admin._wait_until_served(admin, ["a", "b"])  # noqa: SLF001 - the helper ensure_topics calls
    assert admin.asked == 3
