"""Prometheus metrics of the scoring agent, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shelfq.contracts.observability import ConsumerSeries

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumer = ConsumerSeries(r)  # shelfq_consumer_lag{topic, partition}, shelfq_dead_letters_total{reason}
        self.requests = Counter("shelfq_agent_requests", "Requests by outcome: answered, skipped (past the deadline), "
                                "invalid (dead-lettered), unanswerable (no candidates, or all excluded; dead-lettered).", ["outcome"], registry=r)
        self.slates = Counter("shelfq_agent_slates", "Slates produced, by the policy that chose them.", ["policy"], registry=r)
        # An experiment's arms (SHELFQ_AGENT_ARMS); without one these series stay empty.
        self.arm_slates = Counter("shelfq_agent_arm_slates", "Slates produced in an experiment, by arm and by the "
                                  "policy that chose them (the arm's model, or a fallback before it).",
                                  ["arm", "policy"], registry=r)
        self.arm_model_version = Gauge("shelfq_agent_arm_model_version", "Version of the model serving each arm "
                                       "(absent until one arrives).", ["arm", "policy"], registry=r)
        self.arm_model_age = Gauge("shelfq_agent_arm_model_age_seconds", "Age of each arm's model at its latest "
                                   "slate (now - its created_ts).", ["arm"], registry=r)
        self.latency = Histogram("shelfq_agent_latency_seconds", "From the request's arrival in Kafka (the broker's "
                                 "append time) to its slate handed to the producer.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("shelfq_agent_batch_size", "Requests scored together.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_time = Histogram("shelfq_agent_batch_seconds", "Wall time to score and send one micro-batch.",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.model_version = Gauge("shelfq_agent_model_version", "Version of the model serving (0: none yet); in an "
                                   "experiment, the lowest over its arms.", registry=r)
        self.model_age = Gauge("shelfq_agent_model_age_seconds", "Age of the serving model at the latest slate "
                               "(now - its created_ts); in an experiment, of the oldest model an arm serves.", registry=r)
        self.model_freshness = Gauge("shelfq_agent_model_first_use_delay_seconds",
                                     "From the serving model's creation to its first slate.", registry=r)
        self.models = Counter("shelfq_agent_models", "Model messages seen, by outcome (loaded, rejected, stale).",
                              ["outcome"], registry=r)
        self.fallback = Gauge("shelfq_agent_fallback_share", "Share of the latest batch answered without a model "
                              "(popularity or random).",
                              registry=r)
        self.cache = Gauge("shelfq_agent_cache_entries", "Entries of the agent's caches, by cache (items, users, "
                           "popular).", ["cache"], registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
