"""The streams worker, the learner, the agent and the gate ride out a broker outage: a private
embedded broker (its own home and ports; the suite's broker is never touched, and both tests
share this module's) is stopped with SIGTERM under them and started again on the same data;
everything fed before and after comes out, and none of them exits or logs an ERROR. The gate's
test also checks its decisions: one due during the outage is written once the broker is back,
exactly once; one whose wait a stop ended is written whole or not at all, and a restarted gate
decides it only if it is not."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from shelfq.contracts.decisions import read_decisions
from shelfq.contracts.events import Slate, decode, encode
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.settings import Settings
from shelfq.evaluation.gate.service import Gate
from shelfq.learner.synthetic import bait_or_build
from shelfq.ops.topic_admin import ensure_topics
from shelfq.streams.synthetic import synthetic_traffic
from tests.integration.conftest import ShelfqProcess, free_port, read_topic
from tests.integration.test_agent import produce_catalog, send_requests
from tests.integration.test_gate import FAST, publish, untrained
from tests.integration.test_gate_fencing import committed_decisions
from tests.integration.test_learner import SMALL
from tests.integration.test_learner import produce as produce_transitions
from tests.integration.test_streams import (
    JOIN_ENV,
    assert_same_except_emission_time,
    transitions_of,
)
from tests.integration.test_streams import produce as produce_traffic

OUTAGE_S = 20.0


def shelfq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shelfq", *args], env=env, capture_output=True, text=True, timeout=240,
                          check=False)


@pytest.fixture(scope="module")
def broker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An embedded broker of this module's own (home, ports, topics), started once."""
    env = {k: v for k, v in os.environ.items() if k != "SHELFQ_BOOTSTRAP_SERVERS"}
    env.update(SHELFQ_HOME=str(tmp_path_factory.mktemp("outage") / "home"), SHELFQ_BROKER_PORT=str(free_port()),
               SHELFQ_CONTROLLER_PORT=str(free_port()), SHELFQ_PARTITIONS="3", SHELFQ_TOPIC_PREFIX="outage.")
    started = shelfq(env, "broker", "start")
    assert started.returncode == 0, started.stderr
    ensure_topics(Settings.from_env(env))
    yield env
    shelfq(env, "broker", "stop")


class Component(ShelfqProcess):
    """A `shelfq <command>` against the private broker (ShelfqProcess's environment, less a
    SHELFQ_BOOTSTRAP_SERVERS that would point it elsewhere)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen([sys.executable, "-m", "shelfq", *command, "--metrics-port", str(self.port)],
                                     env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115


def test_components_ride_out_a_broker_restart(broker_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env(broker_env)
    env = {**broker_env, **JOIN_ENV}
    worker = Component(["streams", "--max-seconds", "400", "--log-level", "info"], env, tmp_path / "streams.log")
    learner = Component(["learner", "--max-seconds", "400"],
                        {**env, **SMALL, "SHELFQ_LEARNER_CHECKPOINT_DIR": str(tmp_path / "ckpt")}, tmp_path / "learner.log")
    # A request answered late is still answered: the deadline must not skip those of the restart.
    agent = Component(["agent", "--max-seconds", "400"], {**env, "SHELFQ_AGENT_DEADLINE_S": "600"},
                      tmp_path / "agent.log")
    components = {"streams": worker, "learner": learner, "agent": agent}
    try:
        worker.wait(lambda: worker.metric("shelfq_streams_partitions") >= settings.partitions, "owning partitions", 90)
        produce_catalog(settings)
        before = synthetic_traffic(users=10, requests_per_user=2, slate_size=3, seed=1, gap_s=0.2, tag="before")
        produce_traffic(settings, before, shift=time.time())
        learned_before = bait_or_build(150, seed=3)
        produce_transitions(settings, learned_before)
        asked = send_requests(settings, 15, "before")
        # Everything fed so far is through (and committed) before the broker goes.
        read_topic(settings, "transitions", lambda v: set(before.expected) <= set(transitions_of(v)), 60)
        learner.wait(lambda: learner.metric("shelfq_learner_checkpoints_total") >= 2, "a checkpoint", 60)

        stopped = shelfq(broker_env, "broker", "stop")
        assert stopped.returncode == 0 and stopped.stdout.strip() == "stopped", stopped.stderr
        time.sleep(OUTAGE_S / 2)
        # Traffic of the outage: a frontend's producer keeps it until the broker is back, with
        # the outage's event times, so the worker's watermark must not have moved on meanwhile.
        during = synthetic_traffic(users=10, requests_per_user=2, slate_size=3, seed=4, gap_s=0.2, tag="during")
        held = ReliableProducer(settings)
        shift = time.time()
        for topic, key, event in during.events:
            held.produce(settings.topic(topic), encode(msgspec.structs.replace(event, ts=event.ts + shift)), key)
        time.sleep(OUTAGE_S / 2)
        assert {name: c.proc.poll() for name, c in components.items()} == dict.fromkeys(components), \
            {name: c.log.read_text()[-2000:] for name, c in components.items()}
        restarted = shelfq(broker_env, "broker", "start")
        assert restarted.returncode == 0, restarted.stderr
        held.flush(60)

        after = synthetic_traffic(users=10, requests_per_user=2, slate_size=3, seed=2, gap_s=0.2, tag="after")
        produce_traffic(settings, after, shift=time.time())
        learned_after = [t for t in bait_or_build(300, seed=5) if t.transition_id not in
                         {b.transition_id for b in learned_before}][:150]
        produce_transitions(settings, learned_after)
        asked += send_requests(settings, 15, "after")

        expected = set(before.expected) | set(during.expected) | set(after.expected)
        got = transitions_of(read_topic(settings, "transitions", lambda v: expected <= set(transitions_of(v)), 90))
        assert expected - set(got) == set()
        for copies in got.values():  # a repeat is the same transition
            assert_same_except_emission_time(copies)
        slates = {s.request_id for s in (decode(v, Slate) for v in read_topic(
            settings, "slates", lambda v: set(asked) <= {decode(x, Slate).request_id for x in v}, 60))}
        assert set(asked) - slates == set()
        # The learner took in every distinct transition once: the worker's and the fed ones.
        assert {t.transition_id for t in learned_before + learned_after} <= set(got)
        distinct = len(got)
        learner.wait(lambda: learner.metric("shelfq_learner_transitions_total", 'outcome="new"') >= distinct,
                     f"{distinct} new transitions", 60)
        assert learner.metric("shelfq_learner_transitions_total", 'outcome="new"') == distinct
    finally:
        codes = {name: c.stop(60) for name, c in components.items()}
    logs = {name: c.log.read_text() for name, c in components.items()}
    assert codes == dict.fromkeys(components, 0), {n: logs[n][-3000:] for n in components}
    for name, text in logs.items():
        errors = [line for line in text.splitlines() if "ERROR" in line]
        assert errors == [], (name, errors[:10])
    # Each says the broker went. The learner may learn it first from a checkpoint commit its
    # consumer, out of the group by then, skips (contracts.kafka.EventConsumer.commit_unless_left).
    for name in ("streams", "agent"):
        assert "is unreachable" in logs[name], (name, logs[name][-2000:])
    assert "is unreachable" in logs["learner"] or "offsets not committed" in logs["learner"], logs["learner"][-2000:]
    assert "is back after" in logs["agent"]


GATE_OUTAGE_S = 6.0


def in_process_gate(settings: Settings, policy: str) -> Gate:
    """A gate of ``policy`` whose loop the test drives: its models read, nothing judged yet."""
    gate = Gate(settings, dataclasses.replace(FAST, policies=policy))
    gate.watcher.start()
    deadline = time.monotonic() + 30
    while not (gate.models_read.is_set() and gate.judge.models[policy]):
        assert time.monotonic() < deadline, f"the {policy} gate loaded no model"
        time.sleep(0.1)
    return gate


def wait_decided(settings: Settings, policy: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while policy not in read_decisions(settings, timeout=5):
        assert time.monotonic() < deadline, f"no decision of {policy}"
        time.sleep(0.3)


def test_the_gate_rides_out_a_broker_restart(broker_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_env(broker_env)
    env = {**broker_env, "SHELFQ_GATE_POLICIES": "gate-a,gate-d", "SHELFQ_GATE_INTERVAL_S": "0.3"}
    gate = Component(["gate", "--log-level", "info"], env, tmp_path / "gate.log")
    for policy in ("gate-a", "gate-b", "gate-c"):
        publish(settings, untrained(policy), 1, policy=policy)
    waiting, stopped = in_process_gate(settings, "gate-b"), in_process_gate(settings, "gate-c")
    restarted: Gate | None = None
    pool = ThreadPoolExecutor(2)
    try:
        wait_decided(settings, "gate-a", 60)  # the running gate's first decision, before the outage

        assert shelfq(broker_env, "broker", "stop").returncode == 0
        went = time.monotonic()
        written, cut_short = pool.submit(waiting.judge_all), pool.submit(stopped.judge_all)
        time.sleep(1)
        stopped.stop.set()  # a SIGTERM of `shelfq gate` sets it
        assert cut_short.result(timeout=20) == [] and "gate-c" not in stopped.judge.decisions
        time.sleep(max(0.0, GATE_OUTAGE_S - (time.monotonic() - went)))
        assert not written.done() and gate.proc.poll() is None, gate.log.read_text()[-2000:]
        assert shelfq(broker_env, "broker", "start").returncode == 0
        publish(settings, untrained("gate-d"), 1, policy="gate-d")  # for the running gate to decide on

        decisions = written.result(timeout=60)  # waited out, then written
        assert [(d.policy, d.action, d.version) for d in decisions] == [("gate-b", "adopt", 1)]
        assert waiting.judge_all() == []  # its state: nothing decided twice
        # The stopped one's decision is there whole, or not at all: a restart decides it if not.
        restarted = in_process_gate(settings, "gate-c")
        restarted.judge_all()
        assert "gate-c" in read_decisions(settings, timeout=5)
        wait_decided(settings, "gate-d")  # the running gate carries on
    finally:
        code = gate.stop(30)
        pool.shutdown(wait=False)
        for g in (waiting, stopped, restarted):
            if g is not None:
                g.watcher.stop()
                g.close()
    log = gate.log.read_text()
    assert code == 0, log[-3000:]
    assert [line for line in log.splitlines() if "ERROR" in line] == [], log[-3000:]
    assert "gate: the broker at" in log and "is unreachable" in log and "is back after" in log, log[-3000:]
    assert sorted(committed_decisions(settings)) == [("gate-a", "adopt", 1), ("gate-b", "adopt", 1), ("gate-c", "adopt", 1),
                                                     ("gate-d", "adopt", 1)]
