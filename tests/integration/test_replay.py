"""`shelfq replay` against the real broker: a logged CSV lands on the impressions and feedback
topics keyed by user_id, and a streams worker turns it into transitions with the rewards, done
flags, propensities and states the log implies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer

from shelfq.contracts.events import Feedback, Impression, Transition, decode
from shelfq.contracts.settings import Settings
from tests.integration.conftest import ShelfqProcess, read_topic

# u1 buys b from r1, then sees r2 and leaves; u2 puts a in the cart and clicks it. Rows are not
# in time order: replay sorts them.
LOG = """\
kind,ts,request_id,user_id,session_id,items,propensities,policy,item_id,value
impression,1000.0,r1,u1,s1,a|b|c,0.5|0.25|0.25,logged,,
click,1001.0,r1,u1,s1,,,,b,
impression,1000.5,r3,u2,s2,a|b,,,,
purchase,1001.5,r1,u1,s1,,,,b,19.9
add_to_cart,1001.0,r3,u2,s2,,,,a,
click,1001.2,r3,u2,s2,,,,a,
impression,1002.0,r2,u1,s1,d|a,,,,
exit,1003.0,r2,u1,s1,,,,,
"""
EXPECTED = {  # transition_id: (reward, done)
    "r1:0": (0.0, False), "r1:1": (6.0, False), "r1:2": (0.0, False),
    "r2:0": (0.0, True), "r2:1": (0.0, True),
    "r3:0": (3.0, False), "r3:1": (0.0, False),
}
JOIN_ENV = {"SHELFQ_JOIN_WINDOW_S": "2", "SHELFQ_JOIN_ALLOWED_LATENESS_S": "0", "SHELFQ_JOIN_IDLE_ADVANCE_S": "2",
            "SHELFQ_STREAMS_TICK_S": "0.2"}


def read_keyed(settings: Settings, topic: str, count: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(settings.confluent_config(**{"group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.topic(topic)])
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.3)
            if msg is not None and msg.error() is None:
                got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return got


def test_a_replayed_csv_becomes_keyed_events_and_transitions(settings: Settings, tmp_path: Path) -> None:
    worker = ShelfqProcess(["streams", "--max-seconds", "300", "--log-level", "info"], settings,
                           tmp_path / "worker.log", JOIN_ENV)
    try:
        worker.wait(lambda: worker.metric("shelfq_streams_partitions") >= settings.partitions, "owning partitions")
        log = tmp_path / "shop.csv"
        log.write_text(LOG)
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "shelfq", "replay", str(log), "--topic-prefix", settings.topic_prefix,
                               "--rebase", "--speed", "10", "--json"],
                              env={**os.environ, "SHELFQ_PARTITIONS": str(settings.partitions)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert (summary["events"], summary["impression"], summary["click"], summary["add_to_cart"],
                summary["purchase"], summary["exit"], summary["skipped"]) == (8, 3, 2, 1, 1, 1, 0)
        assert summary["seconds"] >= 0.25  # 3 s of log at ten times the speed

        impressions = [(k, decode(v, Impression)) for k, v in read_keyed(settings, "impressions", 3)]
        feedback = [(k, decode(v, Feedback)) for k, v in read_keyed(settings, "feedback", 5)]
        assert len(impressions) == 3 and len(feedback) == 5
        for key, event in impressions + feedback:
            assert key == event.user_id.encode()
            assert started - 10 < event.ts < time.time() + 1  # rebased to now, never ahead of the clock
        by_request = {e.request_id: e for _k, e in impressions}
        assert [(i.item_id, i.event) for i in by_request["r2"].state.history] == [("b", "click"), ("b", "purchase")]
        assert by_request["r1"].state.history == [] and by_request["r1"].propensities == [0.5, 0.25, 0.25]
        # Per partition, the order sent is the order stored: u1's feedback in time order.
        assert [e.event for k, e in feedback if k == b"u1"] == ["click", "purchase", "exit"]

        values = read_topic(settings, "transitions", lambda v: {decode(x, Transition).transition_id for x in v} >= set(EXPECTED))
        got = {t.transition_id: t for t in (decode(v, Transition) for v in values)}
        assert {tid: (t.reward, t.done) for tid, t in got.items()} == EXPECTED, worker.log.read_text()[-3000:]
        assert (got["r1:1"].propensity, got["r1:1"].policy, got["r3:0"].propensity) == (0.25, "logged", None)
        assert got["r3:0"].reward_parts == {"add_to_cart": 1, "click": 1}
        assert got["r2:0"].state == by_request["r2"].state
        assert worker.metric("shelfq_streams_events_total", 'outcome="orphan"') == 0
    finally:
        worker.stop()
