"""The worker's reader of its group's committed offsets (streams/group_offsets.py): what the
group committed, 0 where it committed nothing, and asking never makes it a member of the group
(the worker's Faust consumer must stay its only member, or the group would rebalance).

That it replaces ``AdminClient.list_consumer_group_offsets``, which aborts the process when a
broker SIGKILL drops its connection, is shown by ``experiments/admin_abort.py`` (minutes of
broker restarts, too long for the suite)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from shelfq.contracts.settings import Settings
from shelfq.streams.group_offsets import GroupOffsets


def members(settings: Settings, group: str) -> list[str]:
    admin = AdminClient(settings.confluent_config(log_level=0))
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return [m.member_id for m in described.members]


def test_reads_what_the_group_committed_without_joining_it(settings: Settings, group_id: str) -> None:
    topic = settings.topic("slates")
    member = Consumer(settings.confluent_config(**{"group.id": group_id, "enable.auto.commit": False}))
    member.subscribe([topic])
    reader = GroupOffsets(settings.confluent_config(), group_id)
    try:
        deadline = time.monotonic() + 60
        while len(member.assignment()) < settings.partitions:
            assert time.monotonic() < deadline, "the member got no assignment"
            member.poll(0.2)
        member.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 3)], asynchronous=False)

        found = reader.read([TopicPartition(topic, p) for p in range(settings.partitions)])

        assert found == {(topic, 0): 7, (topic, 1): 3, (topic, 2): 0}
        for _ in range(10):  # a reader that joined would take partitions from the member by now
            member.poll(0.2)
        assert len(members(settings, group_id)) == 1
        assert len(member.assignment()) == settings.partitions
        assert reader.read([]) == {}
    finally:
        reader.close()
        member.close()
