"""Waiting out a broker outage (contracts.outage): retries with backoff, quiet logs, and a
bound past which a component exits non-zero with one clear message."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.outage import (
    BrokerUnreachable,
    BrokerWatch,
    ConnectionNoise,
    Unacknowledged,
    is_transient,
)
from shelfq.contracts.settings import Settings
from shelfq.ops.ports import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def transport_failure() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))


def test_a_call_is_repeated_with_backoff_until_the_broker_is_back(caplog: pytest.LogCaptureFixture) -> None:
    clock, calls = Clock(), []

    def commit() -> str:
        calls.append(clock.now)
        if clock.now < 20:
            raise transport_failure()
        return "committed"

    watch = BrokerWatch("agent", "b:9092", 300, lambda: None, clock=clock, sleep=clock.sleep)
    with caplog.at_level(logging.INFO, logger="shelfq.outage"):
        assert watch.wait_out(commit, "committing offsets") == "committed"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0] and max(gaps) == 8.0
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "unreachable" in caplog.records[0].getMessage() and "back after" in caplog.records[1].getMessage()
    assert not watch.down


def test_past_the_bound_the_wait_ends_with_a_clear_error() -> None:
    clock = Clock()

    def flush() -> None:
        clock.now += 30  # a flush that times out
        raise Unacknowledged("3 messages still unacknowledged after 30s")

    watch = BrokerWatch("learner", "b:9092", 100, lambda: None, clock=clock, sleep=clock.sleep)
    with pytest.raises(BrokerUnreachable, match=r"learner: the broker at b:9092 was unreachable for 1\d\d s .*"
                                                r"SHELFQ_BROKER_OUTAGE_S = 100 s.*start the learner again"):
        watch.wait_out(flush, "publishing a model")
    assert 100 < clock.now <= 140


def test_other_errors_are_not_waited_for() -> None:
    watch = BrokerWatch("agent", "b:9092", 300, lambda: None)
    refused = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not is_transient(refused) and not is_transient(ValueError("x"))
    with pytest.raises(KafkaException):
        watch.wait_out(lambda: (_ for _ in ()).throw(refused), "committing")
    assert watch.settled


def test_a_success_that_needed_no_broker_does_not_say_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    probe_ok = [False]

    def probe() -> None:
        if not probe_ok[0]:
            raise transport_failure()

    watch = BrokerWatch("agent", "b:9092", 300, probe, clock=clock, sleep=clock.sleep)
    with caplog.at_level(logging.INFO, logger="shelfq.outage"):
        watch.lost("1/1 brokers are down")
        watch.check()
        watch.wait_out(lambda: None, "sending slates")  # nothing queued: proves nothing
        assert watch.down
        clock.now += 10
        probe_ok[0] = True
        watch.check()
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"] and not watch.down


def test_connection_failures_become_one_warning_a_minute() -> None:
    noise = ConnectionNoise("Connect to ipv")

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("shelfq.kafka", logging.ERROR, "", 0, msg, (), None)

    first, second = record("FAIL [rdkafka#consumer-1]: Connect to ipv4#127.0.0.1:9092 failed"), record(
        "FAIL [rdkafka#consumer-2]: Connect to ipv4#127.0.0.1:9092 failed")
    other = record("something else went wrong")
    assert noise.filter(first) and first.levelname == "WARNING" and first.levelno == logging.WARNING
    assert not noise.filter(second)
    assert noise.filter(other) and other.levelno == logging.ERROR


def test_the_bound_is_a_setting_of_at_least_five_minutes_by_default() -> None:
    assert Settings().broker_outage_s >= 300
    assert Settings.from_env({"SHELFQ_BROKER_OUTAGE_S": "2.5"}).broker_outage_s == 2.5
    with pytest.raises(ConfigError, match="broker_outage_s"):
        Settings(broker_outage_s=0)


@pytest.mark.parametrize("command", ["agent", "gate"])
def test_a_component_that_cannot_reach_a_broker_for_longer_than_the_bound_exits_non_zero(command: str) -> None:
    env = {**os.environ, "SHELFQ_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "SHELFQ_BROKER_OUTAGE_S": "2",
           f"SHELFQ_{command.upper()}_METRICS_PORT": "0"}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "shelfq", command, "--max-seconds", "120"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert f"shelfq: error: {command}: the broker at 127.0.0.1:" in run.stderr, run.stderr[-2000:]
    assert f"start the {command} again" in run.stderr, run.stderr[-2000:]
    assert "SHELFQ_BROKER_OUTAGE_S = 2 s" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("ERROR") == 0 and run.stderr.count("shelfq: error:") == 1


def test_a_consumer_that_left_its_group_skips_the_commit_instead_of_waiting_for_ever() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from shelfq.contracts.kafka import EventConsumer

    def left(offsets=None):
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))

    def away(offsets=None):
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    def lost(offsets=None):
        raise KafkaException(KafkaError(KafkaError._ASSIGNMENT_LOST))

    consumer = EventConsumer.__new__(EventConsumer)  # no client: only the commit decision is tested
    consumer.commit = left
    assert consumer.commit_unless_left({("transitions", 0): 5}) is False
    # librdkafka's own word for a session that timed out (seen in the chaos run after a broker
    # SIGKILL: the agent exited with "Commit failed: Local: Group partition assignment lost").
    consumer.commit = lost
    assert consumer.commit_unless_left() is False
    consumer.commit = away  # a broker that is away: raised, for BrokerWatch.wait_out to retry
    with pytest.raises(KafkaException):
        consumer.commit_unless_left()
    consumer.commit = lambda offsets=None: None
    assert consumer.commit_unless_left() is True
