"""The deadline's clock: how long a request has waited when the agent takes it up.

A request's ``ts`` is its frontend's clock, which shelfq does not control: a shop runs many
frontend hosts (or stamps requests in the browser), and one of them an hour behind had every
request it sent skipped, one an hour ahead had its requests look fresh however long they had
waited. What a shop expects of the deadline is "do not answer a shopper who has given up
waiting", and that is the time a request spent waiting for the agent, not what its sender's
clock says. So a request's age is measured from when it reached Kafka, by the broker's clock:
the requests topic stores ``message.timestamp.type=LogAppendTime`` (``contracts.topics``), so
each record carries the time the broker appended it, whatever the producer's clock. The agent
compares that with its own clock. Broker and agent belong to whoever runs shelfq and keep NTP
time, so their offset is milliseconds. The time between the frontend's ``ts`` and the broker's
append (a producer's linger, or a queue while the broker was away) is the frontend's and not
counted.

A requests topic still on ``CreateTime`` (created before, and not yet fixed by ``shelfq topics
create``) gives the producer's clock either way: then the request's own ``ts`` is used, as it
always was.
"""

from __future__ import annotations

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME


def arrival_time(request_ts: float, timestamp_type: int, timestamp_ms: int) -> float:
    """When a request reached Kafka, in epoch seconds: the broker's append time when the record
    carries one, else the request's own ``ts``.

    >>> from confluent_kafka import TIMESTAMP_CREATE_TIME
    >>> arrival_time(1000.0, TIMESTAMP_LOG_APPEND_TIME, 4_600_250)   # its frontend an hour behind
    4600.25
    >>> arrival_time(8200.0, TIMESTAMP_LOG_APPEND_TIME, 4_600_250)   # ... or an hour ahead
    4600.25
    >>> arrival_time(1000.0, TIMESTAMP_CREATE_TIME, 1_000_500)       # the producer's clock: its own ts
    1000.0
    """
    if timestamp_type == TIMESTAMP_LOG_APPEND_TIME:
        return timestamp_ms / 1000.0
    return request_ts


def past_deadline(now: float, arrived: float, deadline_s: float) -> bool:
    """Whether a request that arrived at ``arrived`` has waited longer than ``deadline_s`` at
    ``now`` (both the agent's and the broker's clocks, epoch seconds). An arrival ahead of
    ``now`` (clocks a little apart) has not waited at all.

    >>> past_deadline(now=10.0, arrived=7.5, deadline_s=2.0), past_deadline(10.0, 8.0, 2.0)
    (True, False)
    >>> past_deadline(10.0, 10.3, 2.0)
    False
    """
    return now - arrived > deadline_s
