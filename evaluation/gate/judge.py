"""The gate's judgement without Kafka: its state (models by version, the latest decision per
policy, the windows of logged impressions) and the decision each policy needs now.

``shelfq gate`` (``evaluation.gate.service``) feeds it from the topics and writes what it
decides to ``model-decisions``; ``shelfq bench gate`` feeds it from the simulator.
"""

from __future__ import annotations

import logging
import threading
import time

from shelfq.agents.policies import Explorer
from shelfq.contracts.decisions import Figures, ModelDecision
from shelfq.contracts.events import Item, Transition
from shelfq.evaluation.estimators import mean_ci
from shelfq.evaluation.gate import ledger
from shelfq.evaluation.gate.config import GateConfig
from shelfq.evaluation.gate.estimate import Estimates, estimate
from shelfq.evaluation.gate.metrics import OUTCOMES, GateMetrics
from shelfq.evaluation.gate.rules import RollbackClock, promotion
from shelfq.evaluation.gate.window import Window, as_interval
from shelfq.learner.artifact import LoadedModel

log = logging.getLogger("shelfq.gate")
#: Rollback targets kept loaded beside the serving version and the newest.
KEEP_GOOD = 3


class Judge:
    def __init__(self, config: GateConfig, metrics: GateMetrics | None = None,
                 decisions: dict[str, ModelDecision] | None = None) -> None:
        self.config = config
        self.policies = config.policy_keys()
        self.metrics = metrics or GateMetrics(self.policies)
        self.explorer = Explorer(config.exploration, config.epsilon, config.temperature)
        self.windows = {p: Window(config.window, config.positions) for p in self.policies}
        self.clocks = {p: RollbackClock(config.rollback_after_s) for p in self.policies}
        self.models: dict[str, dict[int, LoadedModel]] = {p: {} for p in self.policies}
        self.decisions: dict[str, ModelDecision] = {p: d for p, d in (decisions or {}).items() if p in self.policies}
        self.items: dict[str, Item] = {}
        self._lock = threading.Lock()
        for p, d in self.decisions.items():
            self.metrics.serving_version.labels(p).set(d.serving_version)

    # -- inputs (any thread) -----------------------------------------------------------------

    def add_model(self, model: LoadedModel) -> None:
        if model.headers.policy in self.models:
            with self._lock:
                self.models[model.headers.policy][model.headers.version] = model

    def add_transition(self, t: Transition) -> bool:
        window = self.windows.get(t.policy or "")
        if window is not None:
            window.add(t)
        return window is not None

    def note_decision(self, decision: ModelDecision | None, policy: str) -> None:
        """A decision read from the topic (None: a tombstone). An older one than the state (read
        back after this judge wrote a newer) is ignored; an operator's is counted."""
        if policy not in self.models:
            return
        with self._lock:
            current = self.decisions.get(policy)
            if decision is None:
                self.decisions.pop(policy, None)
                return
            if current is not None and decision.ts < current.ts or decision == current:
                return
            self.decisions[policy] = decision
        if decision.by == "operator":
            self.count(decision)
            self.clocks[policy].reset()

    def record(self, decision: ModelDecision) -> None:
        """This judge's own decision, once written: the state from now on."""
        with self._lock:
            self.decisions[decision.policy] = decision
        self.count(decision)
        log.info("%s: %s v%d; serving v%d. %s", decision.policy, decision.action, decision.version,
                 decision.serving_version, decision.reason)

    def count(self, decision: ModelDecision) -> None:
        self.metrics.decisions.labels(decision.policy, OUTCOMES[decision.action], decision.by).inc()
        self.metrics.serving_version.labels(decision.policy).set(decision.serving_version)

    # -- judging -----------------------------------------------------------------------------

    def step(self, policy: str, now: float | None = None) -> ModelDecision | None:
        """The decision ``policy`` needs now, or None (nothing to decide)."""
        now = time.time() if now is None else now
        with self._lock:
            versions = dict(self.models[policy])
            last = self.decisions.get(policy)
        window = self.windows[policy]
        self.metrics.window.labels(policy).set(len(window))
        if not versions:
            return None
        if last is None:
            return ledger.adopt(policy, max(versions), now)
        self._trim(policy, last)
        due = self._rollback_due(policy, last, now)
        if due is not None:
            return due
        candidate = ledger.candidate(last, versions)
        self.metrics.candidate_version.labels(policy).set(candidate or 0)
        if candidate is None or len(window) < self.config.min_impressions:
            return None
        return self._judge_candidate(policy, last, versions, candidate, now)

    def _judge_candidate(self, policy: str, last: ModelDecision, versions: dict[int, LoadedModel], candidate: int,
                         now: float) -> ModelDecision:
        t0 = time.perf_counter()
        impressions = self.windows[policy].impressions()
        candidates = list(self.items) or list(dict.fromkeys(i for imp in impressions for i in imp.slate))
        ours = estimate(impressions, versions[candidate], self.explorer, candidates, self.config.max_candidates)
        serving_model = versions.get(last.serving_version)
        if serving_model is not None:
            theirs = estimate(impressions, serving_model, self.explorer, candidates, self.config.max_candidates)
        else:  # compacted away: its own traffic's value stands in
            logged = as_interval(mean_ci([sum(p.reward for p in i.positions.values()) for i in impressions])._asdict())
            theirs = Estimates(logged, logged, len(impressions), ["the serving version is not loadable: the window's "
                                                                   "logged value stands in"])
        self.metrics.judge_seconds.labels(policy).set(time.perf_counter() - t0)
        for role, e in (("candidate", ours), ("serving", theirs)):
            self.metrics.set_interval(policy, role, "snips", e.snips)
            self.metrics.set_interval(policy, role, "dr", e.dr)
        verdict = promotion(ours.snips, ours.dr, theirs.snips, theirs.dr, margin=self.config.margin,
                            min_ess=self.config.min_ess)
        figures = Figures(window_impressions=len(impressions), positions=self.config.positions, margin=self.config.margin,
                          candidate_snips=ours.snips, candidate_dr=ours.dr, serving_snips=theirs.snips,
                          serving_dr=theirs.dr)
        reason = f"v{candidate} against v{last.serving_version}: {verdict.reason}"
        if verdict.promote:
            self.clocks[policy].reset()
            return ledger.promote(last, candidate, by="gate", reason=reason, now=now, figures=figures,
                                  snips=ours.snips, dr=ours.dr)
        return ledger.hold(last, candidate, reason=reason, now=now, figures=figures, snips=ours.snips, dr=ours.dr)

    def _rollback_due(self, policy: str, last: ModelDecision, now: float) -> ModelDecision | None:
        """A rollback once the serving version's live reward has stayed below its own
        estimate's interval (DR's, else SNIPS', from its promotion) for ``rollback_after_s``."""
        status = last.status(last.serving_version)
        own = (status.dr or status.snips) if status is not None else None
        live = self.windows[policy].live(last.serving_version, self.config.live_window)
        clock = self.clocks[policy]
        if live is not None:
            for bound in ("value", "low", "high"):
                if getattr(live, bound) is not None:
                    self.metrics.live_reward.labels(policy, bound).set(getattr(live, bound))
        enough = min(self.config.min_impressions, self.config.live_window)
        if own is None or own.low is None or live is None or live.n < enough:
            self.metrics.live_below.labels(policy).set(0)
            return None
        due = clock.update(live.value, own.low, now)
        since = clock.below_since
        self.metrics.live_below.labels(policy).set(0 if since is None else now - since)
        if not due or since is None:
            return None
        if ledger.rollback_target(last) is None:
            log.warning("%s v%d earns %.3f live, below its estimate's interval from %.3f, but there is no good version "
                        "to roll back to", policy, last.serving_version, live.value, own.low)
            return None
        figures = Figures(window_impressions=len(self.windows[policy]), positions=self.config.positions,
                          margin=self.config.margin, live=live, below_since_s=now - since)
        clock.reset()
        reason = (f"v{last.serving_version} earned {live.value:.3f} per impression live ({live.n} impressions), below "
                  f"its estimate {own.value:.3f} (95% interval from {own.low:.3f}) for {now - since:.0f} s")
        return ledger.rollback(last, by="gate", now=now, figures=figures, reason=reason)

    def _trim(self, policy: str, last: ModelDecision) -> None:
        """Keep the serving version, the newest and the last few good ones loaded."""
        with self._lock:
            loaded = self.models[policy]
            keep = {last.serving_version, max(loaded), *last.good[-KEEP_GOOD:]}
            for v in [v for v in loaded if v not in keep]:
                del loaded[v]
