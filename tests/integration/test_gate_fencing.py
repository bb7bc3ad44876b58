"""One gate per policy: a second gate started for a policy fences the first, which stops at its
next decision with one clear error and exit status 1, having written nothing more; the second
carries on, and every decision on the topic is there once."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from shelfq.contracts.decisions import decode_decision, read_decisions
from shelfq.contracts.kafka import topic_partitions
from shelfq.contracts.settings import Settings
from shelfq.evaluation.gate.service import Gate
from tests.integration.conftest import ShelfqProcess
from tests.integration.test_gate import FAST, publish, untrained

TOOK_OVER = "another gate of policy 'dqn' took over"


def committed_decisions(settings: Settings) -> list[tuple[str, str, int]]:
    """(policy, action, version) of every committed message on model-decisions, read to the
    end offsets (as agents and gates read it: read_committed)."""
    consumer = Consumer(settings.confluent_config(**{
        "group.id": f"decisions-check-{time.time()}", "enable.auto.commit": False, "isolation.level": "read_committed"}))
    topic = settings.topic("model-decisions")
    tps = [TopicPartition(topic, p) for p in topic_partitions(consumer, topic)]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    out, deadline = [], time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if all(tp.offset >= ends[tp.partition] for tp in consumer.position(tps) if ends[tp.partition] > 0):
                break
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    d = decode_decision(msg.value())
                    out.append((d.policy, d.action, d.version))
    finally:
        consumer.close()
    return out


def test_a_second_gate_of_a_policy_fences_the_first(settings: Settings, tmp_path: Path) -> None:
    env = {"SHELFQ_GATE_POLICIES": "dqn,dqn-x", "SHELFQ_GATE_INTERVAL_S": "0.3"}
    first = ShelfqProcess(["gate", "--log-level", "info"], settings, tmp_path / "first.log", env)
    second: Gate | None = None
    stop, thread = threading.Event(), None
    try:
        publish(settings, untrained("dqn-x"), 1, policy="dqn-x")
        deadline = time.monotonic() + 90
        while "dqn-x" not in read_decisions(settings, timeout=5):  # the first gate writes
            assert first.proc.poll() is None and time.monotonic() < deadline, first.log.read_text()[-3000:]
            time.sleep(0.3)

        second = Gate(settings, dataclasses.replace(FAST, policies="dqn"))  # registering fences the first
        publish(settings, untrained(), 1)  # a decision due: the first finds out as it writes it
        assert first.proc.wait(60) == 1, first.log.read_text()[-3000:]
        assert "dqn" not in read_decisions(settings, timeout=5), "the fenced gate wrote"
        thread = threading.Thread(target=second.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while (d := read_decisions(settings, timeout=5).get("dqn")) is None:
            assert thread.is_alive() and time.monotonic() < deadline, "the second gate wrote no decision"
            time.sleep(0.3)
        assert (d.action, d.serving_version, d.by) == ("adopt", 1, "gate")
        assert thread.is_alive()
    finally:
        first.stop(30)
        stop.set()
        if thread is not None:
            thread.join(20)
        if second is not None:
            second.close()

    text = first.log.read_text()
    # One clear error, no traceback, and none of librdkafka's fatal-error lines besides it.
    assert text.count(TOOK_OVER) == 1 and "shelfq: error: gate dqn: " + TOOK_OVER in text, text[-3000:]
    assert "Traceback" not in text and not re.search(r"^(ERROR|CRITICAL) ", text, re.MULTILINE), text[-3000:]
    assert sorted(committed_decisions(settings)) == [("dqn", "adopt", 1), ("dqn-x", "adopt", 1)]
