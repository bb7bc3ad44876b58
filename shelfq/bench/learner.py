"""``shelfq bench learner``: transitions trained per second end to end from Kafka, against the
same train step on in-memory batches (the ceiling), measured in the same run.

Join-shaped synthetic transitions are loaded into a fresh ``transitions`` topic first. The
ceiling fills a replay buffer directly and times ``train_step``; the end-to-end run is the real
``Learner`` (consume, decode, dedupe, replay, train at one batch of 256 per 256 transitions,
checkpoint and commit at the end) reading the topic from the beginning. Its rate counts from
the first transition consumed, so the consumer group's join is reported apart (startup_s).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from shelfq.contracts.events import encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import TRANSITIONS, topic_specs
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.synthetic import random_transitions

HISTORY = 50  # interactions per state, as the join's default history_length writes them


def run_bench(settings: Settings, transitions: int, config: LearnerConfig,
              report: Callable[[str], None] = print) -> dict:
    from shelfq.learner.service import Learner
    from shelfq.ops.topic_admin import delete_topics, ensure_topics

    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    bench = Settings.from_env(topic_prefix=prefix, partitions=settings.partitions,
                              bootstrap_servers=settings.bootstrap_servers if settings.external_cluster else None)
    ensure_topics(bench)
    try:
        data = list(random_transitions(transitions, history=HISTORY, seed=1))
        report(f"loading {len(data)} transitions into {bench.topic(TRANSITIONS)} ...")
        producer = ReliableProducer(bench, component=None, **{"linger.ms": 20, "batch.size": 1_000_000})
        for t in data:
            producer.produce(bench.topic(TRANSITIONS), encode(t), t.user_id)
        producer.flush(120)

        steps = max(20, transitions // config.batch_size)
        report(f"ceiling: {steps} train steps on in-memory batches (no Kafka) ...")
        dqn = DQN(config)
        for t in data:
            dqn.add(t)
        for _ in range(3):  # warm-up: allocator, first-touch of the weights
            dqn.train_step(dqn.sample())
        t0 = time.perf_counter()
        for _ in range(steps):
            dqn.train_step(dqn.sample())
        ceiling_s = time.perf_counter() - t0
        ceiling = steps * config.batch_size / ceiling_s
        report(f"  {ceiling:,.0f} transitions/s ({steps / ceiling_s:.1f} steps/s) on {dqn.device}")

        report("end to end: the learner reading the topic (consume, decode, dedupe, replay, train) ...")
        with tempfile.TemporaryDirectory() as tmp:
            # One pass per transition (replay_ratio 1): the figure is how fast the stream is
            # trained on, comparable across settings; a quiet stream gets more passes.
            run_config = dataclasses.replace(config, replay_ratio=1.0, checkpoint_dir=Path(tmp), checkpoint_every_s=3600.0,
                                             publish_every_s=3600.0, publish_every_steps=10**9, metrics_port=0)
            learner = Learner(bench, run_config, group_id=f"{prefix}bench-learner")
            try:
                t_start = time.perf_counter()
                stats = learner.run(max_transitions=transitions, max_seconds=600)
                first = learner.first_consumed_at
            finally:
                learner.close()
        elapsed = (learner.train_done_at or time.perf_counter()) - (first or t_start)
        e2e = stats.consumed / elapsed if elapsed > 0 else 0.0
        report(f"  {e2e:,.0f} transitions/s over {elapsed:.1f}s ({stats.steps} steps)")
    finally:
        delete_topics(bench, [spec.name for spec in topic_specs(bench).values()])
    return {
        "transitions": stats.consumed,
        "transitions_per_s": round(e2e, 1),
        "steps_per_s": round(stats.steps / elapsed, 2) if elapsed > 0 else 0.0,
        "batch_size": config.batch_size,
        "device": str(dqn.device),
        "encoder": config.encoder,
        "ceiling_transitions_per_s": round(ceiling, 1),
        "ratio": round(e2e / ceiling, 3) if ceiling else 0.0,
        "startup_s": round((first or t_start) - t_start, 2),
    }
