"""Settings of the streams worker, from ``SHELFQ_JOIN_*`` and ``SHELFQ_STREAMS_*`` variables.

>>> c = StreamsConfig.from_env({"SHELFQ_JOIN_WINDOW_S": "60", "SHELFQ_JOIN_WEIGHTS": "click=1,purchase=10"})
>>> c.join.window_s, dict(c.join.weights)
(60.0, {'click': 1.0, 'purchase': 10.0})
>>> join_from_env({"SHELFQ_JOIN_WINDOW_S": "60"}, window_s=30.0, history_length=None).window_s  # a flag wins
30.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.settings import fields_from_env
from shelfq.streams.join import JoinConfig
from shelfq.streams.limits import DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES

#: The worker's own settings read ``SHELFQ_STREAMS_<FIELD>``; the join's, ``SHELFQ_JOIN_<FIELD>``.
ENV_PREFIX = "SHELFQ_STREAMS_"
JOIN_ENV_PREFIX = "SHELFQ_JOIN_"


@dataclass(frozen=True)
class StreamsConfig:
    """The join's settings plus the worker's own."""

    join: JoinConfig = field(default_factory=JoinConfig)
    """Window, lateness, reward weights, history length (SHELFQ_JOIN_*)."""
    batch_size: int = 1000
    """Events the agent takes at once; their outputs are sent together, writes coalesced."""
    batch_wait_s: float = 0.02
    """How long the agent waits to fill a batch (bounds the latency batching adds). Faust's
    batching wakes the worker this often even when nothing arrives."""
    fetch_wait_s: float = 0.1
    """How long the broker may hold a fetch of the inputs for ``fetch_min_bytes`` to arrive
    (Kafka's fetch.max.wait.ms): under light traffic it bounds the latency this adds; an idle
    worker fetches this often. Without it every message that arrived cost a fetch round trip
    and a batch of its own."""
    fetch_min_bytes: int = 4096
    """Bytes a fetch waits for, up to ``fetch_wait_s`` (Kafka's fetch.min.bytes): about 20
    events; once traffic brings this much sooner, fetches answer sooner."""
    fetch_partition_bytes: int = 65536
    """The most a fetch brings of one partition (Kafka's max.partition.fetch.bytes, Faust's
    ``consumer_max_fetch_size``; a larger first message still comes). Fetched records are
    handed over partition by partition, so with Faust's 1 MiB (~5,000 events) a backlog's
    slates were all read before its feedback, whose partitions then waited for a minute and
    more; 64 KiB (~300 events) keeps the three inputs within a few thousand events of each
    other."""
    tick_s: float = 0.5
    """How often quiet partitions are checked for windows to close on wall-clock time."""
    outage_grace_s: float = 30.0
    """After a broker outage, how long the wall clock still moves no watermark: frontends'
    producers that kept events through the outage reconnect first (librdkafka backs off up to
    10 s between tries), and those events arrive with the outage's event times; a watermark
    moved on by the clock in the meantime would take them for late or orphans."""
    commit_interval_s: float = 1.0
    """How often Faust commits source offsets (after flushing everything produced)."""
    session_timeout_s: float = 10.0
    """How long the group waits for a silent worker before handing its partitions to the others
    (Kafka's classic default); lower means faster takeover after a crash."""
    stall_timeout_s: float = 300.0
    """How long an assigned input partition may go without a fetch, a delivery to the agent or
    a commit, while it has unread messages, before Faust's stall detector logs an ERROR
    (Faust's ``stream_processing_timeout`` and ``broker_commit_livelock_soft_timeout``; its
    default, 5 minutes). The worker's own guard (``streams.stalls``) acts after 15 s."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """The largest message the worker sends (Faust's ``producer_max_request_size``, counted as
    aiokafka counts it: the record batch that carries it alone). An output over it is
    dead-lettered (reason ``too_large``) instead of sent; keep it at most the broker's and the
    output topics' ``max.message.bytes``."""
    batch_consumer: bool = False
    """Hand each fetched batch straight to the worker (``streams.faust_internals.
    BatchDrainingConsumer``) instead of one message at a time through Faust's consumer,
    conductor and stream (SHELFQ_STREAMS_BATCH_CONSUMER=1). Faust still runs the group, the
    assignor, the tables and the commits."""
    metrics_port: int = 9101
    """Port of /metrics (0 turns the endpoint off)."""
    metrics_addr: str = "0.0.0.0"
    """Address /metrics listens on."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> StreamsConfig:
        """Read ``SHELFQ_JOIN_*`` and ``SHELFQ_STREAMS_*``; keyword overrides (flags) of the
        worker's own fields win, and ``join=`` (``join_from_env``, with the join's flags) over
        ``SHELFQ_JOIN_*``; None means unset."""
        env = os.environ if env is None else env

        # Every field of the worker's own from SHELFQ_STREAMS_<FIELD>; the join from SHELFQ_JOIN_*,
        # unless an override gives a JoinConfig (SHELFQ_STREAMS_JOIN is no setting).
        kw = fields_from_env(cls, ENV_PREFIX, env, **overrides)
        if overrides.get("join") is None:
            kw["join"] = join_from_env(env)
        return cls(**kw)

    def __post_init__(self) -> None:
        if self.tick_s <= 0 or self.commit_interval_s <= 0:
            raise ConfigError("streams: tick_s and commit_interval_s must be > 0")
        if self.session_timeout_s < 6:
            raise ConfigError("streams: session_timeout_s must be >= 6 (heartbeats go every 3 s)")
        if self.batch_wait_s <= 0:
            raise ConfigError(f"streams: batch_wait_s must be > 0, got {self.batch_wait_s}")
        if not 0 <= self.fetch_wait_s <= 10:
            raise ConfigError(f"streams: fetch_wait_s must be within 0 to 10 s, got {self.fetch_wait_s}")
        if self.fetch_min_bytes < 1:
            raise ConfigError(f"streams: fetch_min_bytes must be >= 1, got {self.fetch_min_bytes}")
        if self.fetch_partition_bytes < 1024:
            raise ConfigError(f"streams: fetch_partition_bytes must be >= 1024, got {self.fetch_partition_bytes}")
        if self.outage_grace_s < 0:
            raise ConfigError(f"streams: outage_grace_s must be >= 0, got {self.outage_grace_s}")
        if self.stall_timeout_s <= 0:
            raise ConfigError(f"streams: stall_timeout_s must be > 0, got {self.stall_timeout_s}")
        if self.max_message_bytes < MIN_MAX_MESSAGE_BYTES:
            raise ConfigError(f"streams: max_message_bytes must be >= {MIN_MAX_MESSAGE_BYTES} (a dead letter must fit), "
                              f"got {self.max_message_bytes}")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"streams: metrics_port must be a TCP port or 0, got {self.metrics_port}")


def join_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> JoinConfig:
    """The join's settings from ``SHELFQ_JOIN_<FIELD>`` (its weights as ``click=1,purchase=5``);
    keyword overrides (flags) win; None means unset."""
    env = os.environ if env is None else env
    kw = fields_from_env(JoinConfig, JOIN_ENV_PREFIX, env, **overrides)
    kw.pop("weights", None)  # the raw text, if set: it has a parser of its own
    if overrides.get("weights") is not None:
        kw["weights"] = overrides["weights"]
    elif "SHELFQ_JOIN_WEIGHTS" in env:
        kw["weights"] = parse_weights(env["SHELFQ_JOIN_WEIGHTS"])
    return JoinConfig(**kw)


def parse_weights(text: str) -> dict[str, float]:
    """``click=1,add_to_cart=2,purchase=5`` -> a dict; errors name the bad part."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"SHELFQ_JOIN_WEIGHTS: expected kind=number, got {part!r}") from None
        if not sep:
            raise ConfigError(f"SHELFQ_JOIN_WEIGHTS: expected kind=number, got {part!r}")
    return weights
