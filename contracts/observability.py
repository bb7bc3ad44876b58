"""Series every consumer exposes under the same name, so one query covers all components:
``shelfq_consumer_lag{topic, partition}`` and ``shelfq_dead_letters_total{reason}`` (the
scrape job tells the components apart)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge


class ConsumerSeries:
    """Lag and dead-letter series on one component's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Gauge("shelfq_consumer_lag", "Messages not yet consumed, by topic and partition.",
                         ["topic", "partition"], registry=registry)
        self.dead_letters = Counter("shelfq_dead_letters", "Messages sent to the dead-letter topic, by reason.",
                                    ["reason"], registry=registry)
        self._dead_seen: dict[str, int] = {}
        self._lag_keys: set[tuple[str, str]] = set()

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """The lag of every partition this consumer owns now; partitions it no longer owns
        (after a rebalance) are dropped rather than left at their last value."""
        keys = {(topic, str(partition)) for topic, partition in lags}
        for gone in self._lag_keys - keys:
            self.lag.remove(*gone)
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(lag)
        self._lag_keys = keys

    def sync_dead_letters(self, by_reason: Mapping[str, int]) -> None:
        """Bring the counter up to cumulative counts kept elsewhere (a ``DeadLetterWriter``,
        perhaps in another process)."""
        for reason, total in by_reason.items():
            seen = self._dead_seen.get(reason, 0)
            if total > seen:
                self.dead_letters.labels(reason).inc(total - seen)
                self._dead_seen[reason] = total
