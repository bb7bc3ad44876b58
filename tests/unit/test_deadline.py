"""The agent's deadline counts a request's wait from the broker's append time, so a frontend
whose clock is off by an hour either way is still answered, and a request that really waited
is still skipped."""

from __future__ import annotations

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE

from shelfq.agents.deadline import arrival_time, past_deadline
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import topic_specs

NOW = 1_800_000_000.0  # the agent's clock
DEADLINE_S = 2.0


@pytest.mark.parametrize("skew_s", [-3600.0, -2.5, 0.0, 2.5, 3600.0])
def test_a_request_fresh_in_kafka_is_answered_whatever_its_frontend_clock(skew_s: float) -> None:
    appended_ms = int((NOW - 0.3) * 1000)  # reached Kafka 0.3 s ago
    arrived = arrival_time(NOW - 0.3 + skew_s, TIMESTAMP_LOG_APPEND_TIME, appended_ms)
    assert arrived == pytest.approx(NOW - 0.3)
    assert not past_deadline(NOW, arrived, DEADLINE_S)


@pytest.mark.parametrize("skew_s", [-3600.0, 0.0, 3600.0])
def test_a_request_that_waited_in_kafka_past_the_deadline_is_skipped_whatever_its_frontend_clock(skew_s: float) -> None:
    appended_ms = int((NOW - 5.0) * 1000)  # waited 5 s for the agent
    assert past_deadline(NOW, arrival_time(NOW - 5.0 + skew_s, TIMESTAMP_LOG_APPEND_TIME, appended_ms), DEADLINE_S)


@pytest.mark.parametrize("kind", [TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE])
def test_without_the_brokers_time_the_requests_own_ts_decides_as_before(kind: int) -> None:
    # CreateTime is the producer's clock too: the record's timestamp would be no better.
    assert arrival_time(NOW - 3600.0, kind, int(NOW * 1000)) == NOW - 3600.0
    assert past_deadline(NOW, arrival_time(NOW - 3600.0, kind, int(NOW * 1000)), DEADLINE_S)
    assert not past_deadline(NOW, arrival_time(NOW - 1.0, kind, 0), DEADLINE_S)


def test_the_deadline_boundary_and_clocks_slightly_apart() -> None:
    assert not past_deadline(NOW, NOW - DEADLINE_S, DEADLINE_S)  # exactly the deadline: still answered
    assert past_deadline(NOW, NOW - DEADLINE_S - 0.001, DEADLINE_S)
    assert not past_deadline(NOW, NOW + 0.5, DEADLINE_S)  # the broker's clock a little ahead of the agent's


def test_the_requests_topic_stores_the_brokers_append_time() -> None:
    specs = topic_specs(Settings())
    assert specs["requests"].config["message.timestamp.type"] == "LogAppendTime"
    # Only requests: the join's event times are the events' own ts, never the record's.
    assert [s.logical for s in specs.values() if "message.timestamp.type" in s.config] == ["requests"]
