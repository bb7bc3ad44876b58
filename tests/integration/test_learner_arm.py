"""A learner of one experiment arm against the real broker: it trains on its arm's transitions
only; the others are consumed, counted as skipped and committed with the rest."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import msgspec
from confluent_kafka import Consumer, TopicPartition

from shelfq.contracts.events import encode
from shelfq.contracts.kafka import ReliableProducer, topic_partitions
from shelfq.contracts.settings import Settings
from shelfq.learner.config import LearnerConfig
from shelfq.learner.service import Learner
from shelfq.learner.synthetic import bait_or_build

SMALL = dict(hash_buckets=1024, context_buckets=16, hidden_dim=16, embedding_dim=16, batch_size=32, learning_starts=32,
             replay_capacity=2000, publish_every_steps=1000, checkpoint_every_s=600, device="cpu", metrics_port=0)


def test_a_learner_of_one_arm_trains_on_its_arm_only_and_commits_past_the_others(settings: Settings,
                                                                                 tmp_path: Path) -> None:
    arms = ("longterm", "myopic", None)  # None: a transition without an arm (a frontend's own slate)
    transitions = [msgspec.structs.replace(t, user_id=f"u-{i % 7}", arm=arms[i % 3])
                   for i, t in enumerate(bait_or_build(300, seed=1))]
    producer = ReliableProducer(settings)
    for t in transitions:
        producer.produce(settings.topic("transitions"), encode(t), t.user_id)
    producer.flush()
    mine = {t.transition_id for t in transitions if t.arm == "myopic"}

    group = f"test-learner-arm-{uuid.uuid4().hex[:6]}"
    learner = Learner(settings, LearnerConfig(**SMALL, arm="myopic", policy="dqn-myopic", gamma=0.0,
                                              checkpoint_dir=tmp_path / "ck"), group_id=group)
    outcome = learner.metrics.registry.get_sample_value

    def seen() -> float:
        return sum(outcome("shelfq_learner_transitions_total", {"outcome": o}) or 0.0 for o in ("new", "duplicate", "skipped"))

    stop = threading.Event()
    result: list = []

    def run() -> None:
        try:
            result.append(learner.run(max_seconds=120, stop=stop))
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test's thread
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 110
    while seen() < len(transitions) and time.monotonic() < deadline and not result:
        time.sleep(0.2)
    stop.set()
    thread.join(60)
    learner.close()
    stats = result[0]
    if isinstance(stats, BaseException):
        raise stats

    assert stats.consumed == len(mine) and outcome("shelfq_learner_transitions_total", {"outcome": "new"}) == len(mine)
    assert outcome("shelfq_learner_transitions_total", {"outcome": "skipped"}) == len(transitions) - len(mine)
    assert len(learner.dqn.replay) == len(mine) and set(learner.dqn.dedupe.keys()) == mine
    assert stats.steps > 0, "it trained on what it kept"

    # The skipped transitions are committed with the rest: a restart reads none of them again.
    consumer = Consumer(settings.confluent_config(**{"group.id": group}))
    try:
        topic = settings.topic("transitions")
        tps = [TopicPartition(topic, p) for p in topic_partitions(consumer, topic)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
    finally:
        consumer.close()
    assert sum(ends.values()) == len(transitions)
    assert {p: committed[p] for p, end in ends.items() if end} == {p: end for p, end in ends.items() if end}
