"""The gate rides out a broker outage: a private embedded broker (its own home and ports, as in
test_broker_outage; the suite's broker is never touched) is stopped under a running gate and
started again. The gate neither exits nor logs an ERROR and decides on afterwards; a decision
due during the outage is written once the broker is back, exactly once; one whose wait a stop
ended is written whole or not at all, and a restarted gate decides it only if it is not."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shelfq.contracts.decisions import read_decisions
from shelfq.contracts.settings import Settings
from shelfq.evaluation.gate.service import Gate
from tests.integration.test_broker_outage import Component, broker_env, shelfq  # noqa: F401 - the fixture
from tests.integration.test_gate import FAST, publish, untrained
from tests.integration.test_gate_fencing import committed_decisions

OUTAGE_S = 6.0


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


def test_the_gate_rides_out_a_broker_restart(broker_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    settings = Settings.from_env(broker_env)
    env = {**broker_env, "SHELFQ_GATE_POLICIES": "dqn,dqn-d", "SHELFQ_GATE_INTERVAL_S": "0.3"}
    gate = Component(["gate", "--log-level", "info"], env, tmp_path / "gate.log")
    for policy in ("dqn", "dqn-b", "dqn-c"):
        publish(settings, untrained(policy), 1, policy=policy)
    waiting, stopped = in_process_gate(settings, "dqn-b"), in_process_gate(settings, "dqn-c")
    restarted: Gate | None = None
    pool = ThreadPoolExecutor(2)
    try:
        wait_decided(settings, "dqn", 60)  # the running gate's first decision, before the outage

        assert shelfq(broker_env, "broker", "stop").returncode == 0
        went = time.monotonic()
        written, cut_short = pool.submit(waiting.judge_all), pool.submit(stopped.judge_all)
        time.sleep(1)
        stopped.stop.set()  # a SIGTERM of `shelfq gate` sets it
        assert cut_short.result(timeout=20) == [] and "dqn-c" not in stopped.judge.decisions
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - went)))
        assert not written.done() and gate.proc.poll() is None, gate.log.read_text()[-2000:]
        assert shelfq(broker_env, "broker", "start").returncode == 0
        publish(settings, untrained("dqn-d"), 1, policy="dqn-d")  # for the running gate to decide on

        decisions = written.result(timeout=60)  # waited out, then written
        assert [(d.policy, d.action, d.version) for d in decisions] == [("dqn-b", "adopt", 1)]
        assert waiting.judge_all() == []  # its state: nothing decided twice
        # The stopped one's decision is there whole, or not at all: a restart decides it if not.
        restarted = in_process_gate(settings, "dqn-c")
        restarted.judge_all()
        assert "dqn-c" in read_decisions(settings, timeout=5)
        wait_decided(settings, "dqn-d")  # the running gate carries on
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
    assert sorted(committed_decisions(settings)) == [("dqn", "adopt", 1), ("dqn-b", "adopt", 1), ("dqn-c", "adopt", 1),
                                                     ("dqn-d", "adopt", 1)]
