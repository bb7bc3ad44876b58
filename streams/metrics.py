"""Prometheus metrics of the streams worker, on a registry of its own (one per worker), and the
report that moves the join's outcome counts and gauges into them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shelfq.contracts.events import Transition
from shelfq.contracts.observability import ConsumerSeries
from shelfq.streams.join import INPUTS, Join

# Emit latency is milliseconds to seconds; the buckets resolve the 50 ms budget finely.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
                   0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class StreamsMetrics:
    """The worker's series; ``serve(port)`` exposes them on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inputs = Counter("shelfq_streams_input_events", "Events consumed, by topic, as they arrive.", ["topic"], registry=r)
        self.events = Counter(
            "shelfq_streams_events", "Events consumed, by topic and outcome (each event counts once, when its outcome is known).",
            ["topic", "outcome"], registry=r)
        self.transitions = Counter("shelfq_streams_transitions", "Transitions produced (acknowledged by the broker).", registry=r)
        self.consumer = ConsumerSeries(r)  # shelfq_consumer_lag{topic, partition}, shelfq_dead_letters_total{reason}
        self.dead_letters = self.consumer.dead_letters
        self.feedback = Counter("shelfq_streams_feedback_events", "Feedback attributed to an impression, by event "
                                "(click, add_to_cart, purchase, exit); repeats count once.", ["event"], registry=r)
        self.reward = Counter("shelfq_streams_reward", "Reward of the transitions produced (positive rewards; with "
                              "the default weights, all of it).", registry=r)
        self.pending_items = Gauge("shelfq_streams_pending_items", "Shown items whose transition is not yet produced.", registry=r)
        self.pending_events = Gauge("shelfq_streams_pending_events", "Consumed events whose outcome is still open, by topic.", ["topic"], registry=r)
        self.records = Gauge("shelfq_streams_join_records", "Requests held in the join table.", registry=r)
        self.emit_latency = Histogram(
            "shelfq_streams_emit_latency_seconds", "From the event (or clock tick) that closed a window to its transition acknowledged.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.partitions = Gauge("shelfq_streams_partitions", "Partitions this worker owns (0 while rebalancing).", registry=r)
        self.send_failures = Counter("shelfq_streams_send_failures", "Messages the broker did not take, by topic "
                                     "(transitions are sent again; anything else stops the worker).", ["topic"], registry=r)
        self.stalls = Counter("shelfq_streams_fetch_stalls", "Partitions found delivering nothing despite unread messages, "
                              "by what was done (resume: fetched again; seek: read again from the first unprocessed offset).",
                              ["action"], registry=r)
        self.out_of_order = Counter("shelfq_streams_out_of_order", "Input messages Faust delivered out of offset order, by "
                                    "what was done (streams/sequence.py: hole: offsets left out before it read from the broker; repeat: skipped).", ["verdict"], registry=r)
        self.user_states = Counter("shelfq_streams_user_states", "user-state records published.", registry=r)
        # Experiment arms (the slates' arm, copied into their transitions): compare arms with
        # ratios of rates, e.g. reward per session = rate(reward) / rate(sessions).
        arm = ["arm"]
        self.arm_transitions = Counter("shelfq_streams_arm_transitions", "Transitions produced, by the experiment "
                                       "arm of their slate (none outside an experiment).", arm, registry=r)
        self.arm_impressions = Counter("shelfq_streams_arm_impressions", "Impressions (slates shown) whose "
                                       "transitions were produced, by arm.", arm, registry=r)
        self.arm_sessions = Counter("shelfq_streams_arm_sessions", "Sessions ended by an exit, by arm (their last "
                                    "impression's transitions were produced).", arm, registry=r)
        self.arm_reward = Counter("shelfq_streams_arm_reward", "Reward of the transitions produced, by arm "
                                  "(positive rewards).", arm, registry=r)
        self.arm_clicks = Counter("shelfq_streams_arm_clicks", "Clicked items among the transitions produced, by arm.",
                                  arm, registry=r)
        self.arm_purchases = Counter("shelfq_streams_arm_purchases", "Purchased items among the transitions "
                                     "produced, by arm.", arm, registry=r)

    def count_transition(self, transition: Transition) -> None:
        """Count a transition the broker took: overall, and by arm if its slate had one."""
        self.transitions.inc()
        if transition.reward > 0:  # a counter only goes up; negative weights are not counted
            self.reward.inc(transition.reward)
        arm = transition.arm
        if arm is None:
            return
        self.arm_transitions.labels(arm).inc()
        if transition.position == 0:  # one per impression: every shown slate has a first item
            self.arm_impressions.labels(arm).inc()
            if transition.done:  # done only on the session's last impression
                self.arm_sessions.labels(arm).inc()
        if transition.reward > 0:
            self.arm_reward.labels(arm).inc(transition.reward)
        parts = transition.reward_parts
        if parts.get("click"):
            self.arm_clicks.labels(arm).inc()
        if parts.get("purchase"):
            self.arm_purchases.labels(arm).inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class JoinReport:
    """Moves the join's outcome counts into ``metrics`` and refreshes its gauges; the gauges
    scan every record, so ``report`` runs every ``every_s`` of the clock at most."""

    def __init__(self, join: Join, metrics: StreamsMetrics, every_s: float) -> None:
        self.join = join
        self.metrics = metrics
        self.every_s = every_s
        self._reported = join.outcomes.copy()
        self._last = 0.0

    def maybe_report(self, now: float) -> None:
        """Report if ``every_s`` passed since the last report (``now``: wall time)."""
        if now - self._last >= self.every_s:
            self._last = now
            self.report()

    def report(self) -> None:
        """Move the join's outcome counts into the metrics; refresh the gauges."""
        join, metrics = self.join, self.metrics
        for (topic, outcome), n in join.outcomes.items():
            if n != self._reported[(topic, outcome)]:
                metrics.events.labels(topic, outcome).inc(n - self._reported[(topic, outcome)])
        self._reported = join.outcomes.copy()
        pending = join.pending()
        for topic in INPUTS:
            metrics.pending_events.labels(topic).set(pending[topic])
        metrics.pending_items.set(join.pending_items())
        metrics.records.set(len(join.records))
