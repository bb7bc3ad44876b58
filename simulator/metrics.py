"""Prometheus metrics of the simulator (a frontend's view of shelfq), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SimulatorMetrics:
    """The simulator's series; ``serve(port)`` exposes them on /metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.sessions = Counter("shelfq_simulator_sessions", "Sessions finished.", registry=r)
        self.requests = Counter("shelfq_simulator_requests", "Requests sent, by how they were answered "
                                "(slate, timeout: a random slate was shown instead).", ["outcome"], registry=r)
        self.feedback = Counter("shelfq_simulator_feedback_events", "Feedback events sent, by event.", ["event"], registry=r)
        self.reward = Counter("shelfq_simulator_reward", "Reward earned (click 1, add_to_cart 2, purchase 5), by the "
                              "policy that chose the slate.", ["policy"], registry=r)
        self.slates = Counter("shelfq_simulator_slates", "Slates shown, by the policy that chose them.", ["policy"], registry=r)
        self.revenue = Counter("shelfq_simulator_revenue", "Price of the purchases.", registry=r)
        self.slate_wait = Histogram("shelfq_simulator_slate_wait_seconds", "From a request sent to its slate received.",
                                    buckets=WAIT_BUCKETS, registry=r)
        self.model_version = Gauge("shelfq_simulator_model_version", "Newest model version seen on a slate.", registry=r)
        self.active_sessions = Gauge("shelfq_simulator_active_sessions", "Sessions in progress.", registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
