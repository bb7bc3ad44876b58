"""The gate's decision logic, pure: the promotion and rollback rules, the decision ledger, the
window of logged impressions, and the judge's first steps (no Kafka)."""

from __future__ import annotations

import pytest

from shelfq.contracts.decisions import Interval, ModelDecision, apply_message, decode_decision, encode_decision
from shelfq.contracts.errors import ConfigError, EventError
from shelfq.contracts.events import State, Transition
from shelfq.evaluation.gate import ledger
from shelfq.evaluation.gate.config import GateConfig
from shelfq.evaluation.gate.judge import Judge
from shelfq.evaluation.gate.rules import RollbackClock, promotion
from shelfq.evaluation.gate.window import Window
from shelfq.learner.artifact import load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.network import QNetwork

SERVING = Interval(value=1.0, low=0.9, high=1.1, n=500, ess=500.0)


def iv(value: float, half: float = 0.05, ess: float = 300.0) -> Interval:
    return Interval(value=value, low=value - half, high=value + half, n=500, ess=ess)


@pytest.mark.parametrize(("snips", "dr", "promote"), [
    (iv(1.0), iv(1.0), True),            # as good, tightly: inside the margin
    (iv(0.99, 0.03), iv(1.2), True),
    (iv(1.3), iv(0.9), False),           # DR says no: both must clear
    (iv(0.9), iv(1.3), False),           # SNIPS says no
    (iv(1.5, 0.6), iv(1.5, 0.6), False),  # higher but too unsure: its lower bound is below the bar
])
def test_a_candidate_is_promoted_only_when_both_lower_bounds_clear_the_bar(snips, dr, promote) -> None:
    verdict = promotion(snips, dr, SERVING, SERVING, margin=0.05, min_ess=30)
    assert verdict.promote is promote, verdict.reason


def test_a_candidate_without_overlap_or_interval_is_held() -> None:
    assert not promotion(iv(2.0, ess=5.0), iv(2.0, ess=5.0), SERVING, SERVING, margin=0.05, min_ess=30).promote
    no_interval = Interval(value=2.0, n=1)
    assert "no interval" in promotion(no_interval, iv(2.0), SERVING, SERVING, margin=0.05, min_ess=0).reason
    assert "no SNIPS" in promotion(None, iv(2.0), SERVING, SERVING, margin=0.05, min_ess=0).reason


def test_the_margin_is_a_share_of_the_serving_estimate() -> None:
    candidate = iv(0.9, 0.0)  # 10% below the serving value, no doubt about it
    assert not promotion(candidate, candidate, SERVING, SERVING, margin=0.05, min_ess=0).promote
    assert promotion(candidate, candidate, SERVING, SERVING, margin=0.1, min_ess=0).promote


def test_rollback_needs_the_live_reward_below_for_the_whole_time() -> None:
    clock = RollbackClock(after_s=10)
    assert [clock.update(0.5, 0.9, t) for t in (0, 5, 9.9)] == [False, False, False]
    assert not clock.update(0.95, 0.9, 11)  # back inside: the clock starts again
    assert [clock.update(0.5, 0.9, t) for t in (12, 21, 22)] == [False, False, True]


def test_the_ledger_tracks_serving_good_and_every_versions_fate() -> None:
    d = ledger.adopt("dqn", 1, now=0.0)
    d = ledger.hold(d, 2, reason="below", now=1.0, snips=iv(0.5))
    assert (d.serving_version, d.status(2).status, d.status(2).snips.value) == (1, "held", 0.5)
    d = ledger.promote(d, 3, by="gate", reason="cleared", now=2.0, dr=iv(1.2))
    assert (d.serving_version, d.good, d.status(1).status, d.status(3).dr.value) == (3, [1, 3], "retired", 1.2)
    assert ledger.candidate(d, [1, 2, 3, 4, 5]) == 5 and ledger.candidate(d, [1, 2, 3]) is None
    d = ledger.rollback(d, by="operator", reason="by hand", now=3.0)
    assert (d.serving_version, d.good, d.status(3).status, d.status(3).dr.value) == (1, [1], "rolled_back", 1.2)
    assert ledger.statuses(d, [1, 2, 3, 4]) == {1: "serving", 2: "held", 3: "rolled_back", 4: "shadow"}
    with pytest.raises(ValueError, match="already serves"):
        ledger.promote(d, 1, by="operator", reason="", now=4.0)
    with pytest.raises(ValueError, match="nothing to roll back to"):
        ledger.rollback(d, by="operator", reason="", now=4.0)


def test_a_decision_round_trips_and_a_bad_one_is_skipped() -> None:
    d = ledger.promote(ledger.adopt("dqn", 1, now=0.0), 2, by="gate", reason="ok", now=1.0, snips=iv(1.0))
    assert decode_decision(encode_decision(d)) == d
    state: dict[str, ModelDecision] = {}
    assert apply_message(state, b"dqn", encode_decision(d)) == d and state["dqn"].serving_version == 2
    assert apply_message(state, b"other", encode_decision(d)) is None  # keyed by another policy: not its decision
    assert apply_message(state, b"dqn", b"not json") is None and state["dqn"] == d
    apply_message(state, b"dqn", None)
    assert state == {}
    with pytest.raises(EventError):
        decode_decision(b'{"schema":"shelfq.model-decision.v1","policy":"dqn","serving_version":-1}')


def transition(request: str, position: int, slate: list[str], reward: float, version: int | None = 1,
               policy: str = "dqn") -> Transition:
    return Transition(transition_id=f"{request}:{position}", request_id=request, user_id="u", session_id="s",
                      state=State(history=[]), action=slate[position], position=position, slate=slate, reward=reward,
                      reward_parts={}, next_state=State(history=[]), done=False, ts_impression=1.0, ts_emitted=2.0,
                      propensity=0.5, policy=policy, model_version=version)


def test_the_window_keeps_complete_impressions_cut_to_the_estimated_positions() -> None:
    w = Window(size=2, positions=2)
    w.add(transition("r1", 0, ["a", "b", "c"], 1.0))
    assert len(w) == 0  # position 1 is still missing
    w.add(transition("r1", 2, ["a", "b", "c"], 5.0))  # beyond the estimated positions: ignored
    w.add(transition("r1", 1, ["a", "b", "c"], 0.0))
    w.add(transition("r1", 1, ["a", "b", "c"], 0.0))  # a repeat counts once
    assert len(w) == 1 and w.impressions()[0].slate == ["a", "b"]
    for r, version in (("r2", 2), ("r3", 2)):
        for p in (0, 1):
            w.add(transition(r, p, ["a", "b"], 1.0, version=version))
    assert [i.request_id for i in w.impressions()] == ["r2", "r3"]  # the oldest left
    assert w.live(2, 10).value == 2.0 and w.live(1, 10) is None


def tiny_model(version: int) -> object:
    config = LearnerConfig(hash_buckets=64, context_buckets=8, embedding_dim=4, hidden_dim=4, history_length=2)
    value, headers = model_message(QNetwork(config), config, version=version, created_ts=1.0)
    return load_model(value, headers.to_headers())


def test_the_judge_adopts_first_then_keeps_a_candidate_in_shadow_until_the_window_is_full() -> None:
    judge = Judge(GateConfig(window=10, min_impressions=5, metrics_port=0))
    assert judge.step("dqn", now=0.0) is None  # no model yet
    judge.add_model(tiny_model(1))
    judge.add_model(tiny_model(2))
    first = judge.step("dqn", now=1.0)
    assert (first.action, first.serving_version) == ("adopt", 2)  # what agents without a decision serve
    judge.record(first)
    judge.add_model(tiny_model(3))
    assert judge.step("dqn", now=2.0) is None  # v3 in shadow: the window holds no impression yet
    assert judge.metrics.registry.get_sample_value("shelfq_gate_candidate_version", {"policy": "dqn"}) == 3
    older = ledger.adopt("dqn", 1, now=0.5)
    judge.note_decision(older, "dqn")  # read back late: older than the state, ignored
    assert judge.decisions["dqn"] == first
    by_hand = ledger.promote(first, 3, by="operator", reason="by hand", now=3.0)
    judge.note_decision(by_hand, "dqn")
    assert judge.decisions["dqn"] == by_hand
    assert judge.metrics.registry.get_sample_value(
        "shelfq_gate_decisions_total", {"policy": "dqn", "outcome": "promoted", "by": "operator"}) == 1


def test_impossible_settings_are_refused() -> None:
    for bad in ({"policies": " , "}, {"min_impressions": 20, "window": 10}, {"exploration": "softmax"},
                {"interval_s": 0}):
        with pytest.raises(ConfigError):
            GateConfig(**bad)
