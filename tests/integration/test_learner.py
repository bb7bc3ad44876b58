"""The learner against the real broker: transitions in, loadable model versions out; kill -9
and restart resume from the checkpoint without skipping or re-counting; corrupt models are
refused with a reason."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from shelfq.contracts.errors import EventError
from shelfq.contracts.events import encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.learner.artifact import load_model
from shelfq.learner.checkpoint import load_checkpoint
from shelfq.learner.service import latest_published_version
from shelfq.learner.synthetic import bait_or_build
from shelfq.ops import scrape
from tests.integration.conftest import ShelfqProcess

SMALL = {
    "SHELFQ_LEARNER_HASH_BUCKETS": "1024", "SHELFQ_LEARNER_CONTEXT_BUCKETS": "16", "SHELFQ_LEARNER_HIDDEN_DIM": "16",
    "SHELFQ_LEARNER_EMBEDDING_DIM": "16", "SHELFQ_LEARNER_BATCH_SIZE": "32", "SHELFQ_LEARNER_LEARNING_STARTS": "32",
    "SHELFQ_LEARNER_REPLAY_CAPACITY": "2000", "SHELFQ_LEARNER_PUBLISH_EVERY_STEPS": "4",
    "SHELFQ_LEARNER_CHECKPOINT_EVERY_S": "1", "SHELFQ_LEARNER_DEVICE": "cpu",
}


class LearnerProcess(ShelfqProcess):
    def __init__(self, settings: Settings, checkpoint_dir: Path, log: Path, *extra: str) -> None:
        super().__init__(["learner", "--max-seconds", "120", *extra], settings, log,
                         {**SMALL, "SHELFQ_LEARNER_CHECKPOINT_DIR": str(checkpoint_dir)})

    def wait_serving(self, timeout: float = 240.0) -> None:
        """Until its /metrics answers: the learner is built (torch imported, checkpoint loaded,
        the published version asked) and reads. On the shared 2 cores under load that took
        more than the 60 s the waits below give to the behaviour itself (run 12 of a 20-run loop failed
        "timed out waiting for 300 transitions" with an empty log: still starting)."""
        self.wait(lambda: bool(scrape.series(self.port)), "the learner to start", timeout)


def produce(settings: Settings, transitions) -> None:
    producer = ReliableProducer(settings)
    for t in transitions:
        producer.produce(settings.topic("transitions"), encode(t), t.user_id)
    producer.flush()


def models(settings: Settings) -> list:
    """The models topic's committed messages, in offset order (what an agent reads)."""
    consumer = Consumer(settings.confluent_config(**{"group.id": f"models-{time.time()}", "auto.offset.reset": "earliest",
                                                     "enable.partition.eof": True, "isolation.level": "read_committed"}))
    consumer.subscribe([settings.topic("models")])
    out, deadline = [], time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == -191:  # end of partition
                    break
                continue
            out.append(msg)
    finally:
        consumer.close()
    return out


def test_transitions_in_model_versions_out(settings: Settings, tmp_path: Path) -> None:
    produce(settings, bait_or_build(400, seed=3))
    learner = LearnerProcess(settings, tmp_path / "ckpt", tmp_path / "learner.log", "--max-transitions", "400")
    assert learner.proc.wait(120) == 0, learner.log.read_text()[-3000:]
    published = [m for m in models(settings) if m.key() == b"dqn"]
    assert published, learner.log.read_text()[-3000:]
    versions = [load_model(m.value(), m.headers(), policy="dqn").headers.version for m in published]
    assert versions == sorted(versions) and versions[0] == 1 and len(set(versions)) == len(versions)
    assert "consumed 400 transitions (0 repeats)" in learner.log.read_text()


def test_kill_9_resumes_from_the_checkpoint_without_skipping_or_recounting(settings: Settings, tmp_path: Path) -> None:
    first_half, second_half = bait_or_build(600, seed=4)[:300], bait_or_build(600, seed=4)[300:]
    ckpt = tmp_path / "ckpt"
    produce(settings, first_half)
    first = LearnerProcess(settings, ckpt, tmp_path / "first.log")
    first.wait_serving()
    first.wait(lambda: first.metric("shelfq_learner_transitions_total", 'outcome="new"') >= 300, "300 transitions")
    first.wait(lambda: first.metric("shelfq_learner_checkpoints_total") >= 2 and first.metric("shelfq_learner_model_version") >= 1,
               "a checkpoint after the transitions and a model")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    before = load_checkpoint(ckpt)
    assert before is not None
    published_before = latest_published_version(settings, "dqn")
    produce(settings, second_half)

    second = LearnerProcess(settings, ckpt, tmp_path / "second.log")
    second.wait_serving()
    second.wait(lambda: second.metric("shelfq_learner_transitions_total", 'outcome="new"') >= 600 - sum(
        o for _t, _p, o in before.state["offsets"]), "the rest of the transitions")
    second.wait(lambda: second.metric("shelfq_learner_model_version") > published_before, "a new model version")
    assert second.stop() == 0
    log = (tmp_path / "second.log").read_text()
    assert f"next model version {max(before.state['version'], published_before) + 1}" in log, log[-2000:]
    after = load_checkpoint(ckpt)
    assert after is not None
    # Every transition is in exactly once: all 600 consumed, none read twice after the restart.
    assert sum(o for _t, _p, o in after.state["offsets"]) == 600
    assert int(after.arrays["replay.cursor"][1]) == 600
    assert "(0 repeats)" in log
    assert after.state["step"] > before.state["step"]
    versions = [load_model(m.value(), m.headers()).headers.version for m in models(settings) if m.key() == b"dqn"]
    assert len(versions) == len(set(versions)), f"a version was published twice: {versions}"


def test_a_corrupt_model_message_is_refused_with_a_reason_and_skipped_for_versions(settings: Settings, tmp_path: Path) -> None:
    produce(settings, bait_or_build(200, seed=5))
    learner = LearnerProcess(settings, tmp_path / "ckpt", tmp_path / "learner.log", "--max-transitions", "200")
    assert learner.proc.wait(120) == 0, learner.log.read_text()[-3000:]
    good = [m for m in models(settings) if m.key() == b"dqn"][-1]
    producer = ReliableProducer(settings)
    bad_headers = [(k, b"999" if k == "version" else v) for k, v in good.headers()]
    producer.produce(settings.topic("models"), good.value()[: len(good.value()) // 2], "dqn", headers=bad_headers)
    producer.flush()
    corrupt = [m for m in models(settings) if m.key() == b"dqn"][-1]
    with pytest.raises(EventError) as info:
        load_model(corrupt.value(), corrupt.headers(), policy="dqn")
    assert info.value.field.startswith("value") and "buffer" in str(info.value)
    # The newest valid version is still the one to continue after: 999 was never a model.
    assert latest_published_version(settings, "dqn") == load_model(good.value(), good.headers()).headers.version
