"""Prometheus metrics of the learner, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shelfq.contracts.observability import ConsumerSeries

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class LearnerMetrics:
    """The learner's series; ``serve(port)`` exposes them on /metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.transitions = Counter("shelfq_learner_transitions", "Transitions consumed, by outcome (new, duplicate).",
                                   ["outcome"], registry=r)
        self.steps = Counter("shelfq_learner_train_steps", "Gradient steps taken.", registry=r)
        self.loss = Gauge("shelfq_learner_loss", "Huber loss of the latest step.", registry=r)
        self.td_error = Gauge("shelfq_learner_td_error", "Mean absolute TD error of the latest step.", registry=r)
        self.mean_q = Gauge("shelfq_learner_mean_q", "Mean Q(s, a) of the latest batch.", registry=r)
        self.model_version = Gauge("shelfq_learner_model_version", "Version of the latest published model.", registry=r)
        self.last_publish = Gauge("shelfq_learner_last_publish_timestamp_seconds",
                                  "When the latest model was published (seconds since it: time() - this).", registry=r)
        self.step_time = Histogram("shelfq_learner_step_seconds", "Wall time of one gradient step.",
                                   buckets=STEP_BUCKETS, registry=r)
        self.replay_size = Gauge("shelfq_learner_replay_size", "Transitions in the replay buffer.", registry=r)
        self.consumer = ConsumerSeries(r)  # shelfq_consumer_lag{topic, partition}, shelfq_dead_letters_total{reason}
        self.checkpoints = Counter("shelfq_learner_checkpoints", "Checkpoints written (each followed by a commit).",
                                   registry=r)
        self.items = Gauge("shelfq_learner_catalog_items", "Items known to the learner (candidates for s').", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
