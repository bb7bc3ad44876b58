"""Prometheus metrics of the model gate, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from shelfq.contracts.decisions import Interval

#: Decision counter label per action.
OUTCOMES = {"adopt": "adopted", "promote": "promoted", "hold": "held", "rollback": "rolled_back"}


class GateMetrics:
    def __init__(self, policies: tuple[str, ...] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = Counter("shelfq_gate_decisions", "Decisions written to model-decisions, by policy and outcome "
                                 "(adopted, promoted, held, rolled_back) and by whom (gate, operator).",
                                 ["policy", "outcome", "by"], registry=r)
        self.serving_version = Gauge("shelfq_gate_serving_version", "The version model-decisions says each policy "
                                     "serves.", ["policy"], registry=r)
        self.candidate_version = Gauge("shelfq_gate_candidate_version", "The version in shadow, being judged (0: none).",
                                       ["policy"], registry=r)
        self.estimate = Gauge("shelfq_gate_estimate", "Off-policy estimates of the latest judgement, reward per "
                              "impression of the estimated positions: by policy, role (candidate, serving), "
                              "estimator (snips, dr) and bound (value, low, high).",
                              ["policy", "role", "estimator", "bound"], registry=r)
        self.live_reward = Gauge("shelfq_gate_live_reward", "The serving version's live reward per impression of the "
                                 "estimated positions, by bound (value, low, high).", ["policy", "bound"], registry=r)
        self.live_below = Gauge("shelfq_gate_live_below_estimate_seconds", "How long the serving version's live reward "
                                "has stayed below its estimate's interval (0: it is not below).", ["policy"], registry=r)
        self.window = Gauge("shelfq_gate_window_impressions", "Complete impressions in the evaluation window.",
                            ["policy"], registry=r)
        self.judge_seconds = Gauge("shelfq_gate_judgement_seconds", "Wall time of the latest judgement (both models "
                                   "scored on the window).", ["policy"], registry=r)

        for policy in policies:  # every outcome's series from the start: an alert's increase() sees the first one
            for outcome in OUTCOMES.values():
                for by in ("gate", "operator"):
                    self.decisions.labels(policy, outcome, by)

    def set_interval(self, policy: str, role: str, estimator: str, interval: Interval | None) -> None:
        if interval is None:
            return
        for bound in ("value", "low", "high"):
            value = getattr(interval, bound)
            if value is not None:
                self.estimate.labels(policy, role, estimator, bound).set(value)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
