"""Experiment arms: the setting's parser and the split of users by a stable hash."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from shelfq.agents.arms import Arm, ArmSplit, parse_arms, unit_hash
from shelfq.agents.config import AgentConfig
from shelfq.contracts.errors import ConfigError

USERS = [f"shopper-{i:05d}" for i in range(20_000)]


def test_the_demo_setting_parses_into_named_arms_with_weights() -> None:
    assert parse_arms("longterm=dqn-longterm:0.5,myopic=dqn-myopic:0.5") == (
        Arm("longterm", "dqn-longterm", 0.5), Arm("myopic", "dqn-myopic", 0.5))
    assert parse_arms(" a = p1 : 2 ,, b=p2 ") == (Arm("a", "p1", 2.0), Arm("b", "p2", 1.0))
    assert parse_arms("") == () and parse_arms("  ") == ()


@pytest.mark.parametrize("text, problem", [
    ("a=p:0", "weight 0.0"), ("a=p:-1", "weight -1.0"), ("a=p:nan", "weight nan"), ("a=p:inf", "weight inf"),
    ("a=p:half", "not a number"), ("a=p:1,a=q:1", "named twice"), ("a", "not name=policy"), ("=p:1", "not name=policy"),
    ("a=:1", "not name=policy"), ("a b=p", "without spaces"), (",", "names no arm"), ("a=" + "p" * 257, "at most 256"),
])
def test_impossible_arms_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_arms(text)
    with pytest.raises(ConfigError, match=problem):
        AgentConfig(arms=text)


def test_without_arms_one_unnamed_arm_serves_the_policy() -> None:
    assert AgentConfig(policy="dqn-x").served_arms() == (Arm("", "dqn-x"),)
    assert [a.name for a in AgentConfig.from_env({"SHELFQ_AGENT_ARMS": "x=p:1,y=q:1"}).served_arms()] == ["x", "y"]


@pytest.mark.parametrize("weights", [(0.5, 0.5), (1.0, 3.0), (0.2, 0.3, 0.5), (1.0, 1.0, 1.0, 1.0)])
def test_each_arm_gets_its_weight_s_share_of_users(weights: tuple[float, ...]) -> None:
    arms = [Arm(f"arm{i}", f"p{i}", w) for i, w in enumerate(weights)]
    split = ArmSplit(arms)
    counts = [0] * len(arms)
    for user in USERS:
        counts[split.index_of(user)] += 1
    n = len(USERS)
    for count, w in zip(counts, weights):
        p = w / sum(weights)
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(count - n * p) < 4 * sigma, (counts, weights)


def test_a_user_always_lands_in_the_same_arm_whatever_the_process() -> None:
    """The split is blake2b of the user id: not Python's salted hash(), so every replica and
    every restart agrees."""
    split = ArmSplit(parse_arms("a=p:1,b=q:1,c=r:2"))
    here = [split.arm_of(u).name for u in USERS[:500]]
    assert here == [split.arm_of(u).name for u in USERS[:500]]
    code = ("from agents.arms import ArmSplit, parse_arms; s = ArmSplit(parse_arms('a=p:1,b=q:1,c=r:2')); "
            "print(','.join(s.arm_of(f'shopper-{i:05d}').name for i in range(500)))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        assert out.split(",") == here
    assert set(here) == {"a", "b", "c"}


def test_moving_a_weight_moves_only_users_at_the_boundary() -> None:
    before = ArmSplit(parse_arms("a=p:0.5,b=q:0.5"))
    after = ArmSplit(parse_arms("a=p:0.6,b=q:0.4"))
    moved = [(before.arm_of(u).name, after.arm_of(u).name) for u in USERS]
    assert ("a", "b") not in moved, "nobody leaves the arm that grew"
    share = moved.count(("b", "a")) / len(USERS)
    assert 0.08 < share < 0.12  # about the 10% of the range that changed hands


def test_the_hash_is_spread_over_the_unit_interval() -> None:
    values = sorted(unit_hash(u) for u in USERS)
    assert 0 <= values[0] and values[-1] < 1
    # Kolmogorov-Smirnov distance to the uniform distribution, well inside its 1% bound (1.63 / sqrt(n)).
    d = max(max(abs((i + 1) / len(values) - v), abs(i / len(values) - v)) for i, v in enumerate(values))
    assert d < 1.63 / math.sqrt(len(values))


# -- the arm travels: slate -> join -> transition -> the worker's per-arm counters -------------


def _session_events(arm: str | None, inline: bool = False) -> list:
    import msgspec

    from shelfq.contracts.events import Feedback, Impression, Slate, State

    base = dict(user_id="u1", session_id="s1")
    slate = Slate(request_id="r1", ts=100.0, items=["a", "b"], scores=[1.0, 0.5], propensities=[0.9, 0.8],
                  policy="dqn-longterm", model_version=3, arm=arm, **base)
    impression = Impression(request_id="r1", ts=101.0, items=["a", "b"], **base)
    if inline:  # a frontend's own slate: it names its state and policy, and no arm
        impression = msgspec.structs.replace(impression, state=State(), propensities=[0.5, 0.5], policy="random")
    return [("slates", slate), ("impressions", impression),
            ("feedback", Feedback(request_id="r1", ts=102.0, event="click", item_id="b", **base)),
            ("feedback", Feedback(request_id="r1", ts=103.0, event="purchase", item_id="b", value=9.0, **base)),
            ("feedback", Feedback(request_id="r1", ts=104.0, event="exit", **base))]


def _transitions(events: list) -> list:
    from shelfq.streams.join import Join, JoinConfig

    join = Join(JoinConfig(window_s=60))
    out = []
    for topic, event in events:
        for t in join.process(0, topic, event, now=event.ts).transitions:
            out.append(t)
            join.acked(t)
    return sorted(out, key=lambda t: t.position)


def test_the_join_copies_the_slate_s_arm_into_each_transition_and_it_round_trips() -> None:
    from shelfq.contracts.events import Transition, decode, encode

    transitions = _transitions(_session_events("longterm"))
    assert [(t.action, t.arm, t.policy) for t in transitions] == [("a", "longterm", "dqn-longterm"),
                                                                 ("b", "longterm", "dqn-longterm")]
    assert decode(encode(transitions[0]), Transition).arm == "longterm"
    plain = _transitions(_session_events(None))
    assert {t.arm for t in plain} == {None} and all(b'"arm"' not in encode(t) for t in plain)
    inline = _transitions(_session_events("longterm", inline=True))
    assert {(t.arm, t.policy) for t in inline} == {(None, "random")}, "an impression with its own state names no arm"


def test_old_transitions_without_an_arm_still_decode_and_a_learner_of_one_arm_skips_the_others() -> None:
    import msgspec

    from shelfq.contracts.errors import EventError
    from shelfq.contracts.events import Transition, decode, encode
    from shelfq.contracts.examples import EXAMPLES
    from shelfq.learner.ingest import arm_filter
    from shelfq.learner.wire import decode_transition

    t = EXAMPLES["transitions"][1]
    old = encode(t)
    assert b'"arm"' not in old and decode(old, Transition).arm is None and decode_transition(old).action == "sku-3"
    keep = arm_filter("myopic", 1 << 20)
    mine, theirs = (encode(msgspec.structs.replace(t, arm=a)) for a in ("myopic", "longterm"))
    assert keep(mine).action == "sku-3" and keep(theirs) is None and keep(old) is None
    with pytest.raises(EventError, match="action"):  # one of its own that is invalid is a dead letter as before
        keep(mine.replace(b'"position":1', b'"position":0'))
    with pytest.raises(EventError, match="malformed"):  # so is what is not a transition at all
        keep(b'{"schema": "shelfq.transition.v1", "arm": ')
    with pytest.raises(EventError, match="arm"):
        keep(mine.replace(b'"arm":"myopic"', b'"arm":7'))


def test_the_worker_counts_transitions_reward_clicks_purchases_and_sessions_per_arm() -> None:
    from shelfq.streams.metrics import StreamsMetrics

    m = StreamsMetrics()
    for arm in ("longterm", "myopic", "myopic"):
        for t in _transitions(_session_events(arm)):
            m.count_transition(t)
    for t in _transitions(_session_events(None)):
        m.count_transition(t)

    def value(name: str, arm: str) -> float:
        return m.registry.get_sample_value(name, {"arm": arm}) or 0.0

    # one session of two shown items; b clicked and bought: reward 1 + 5 (add_to_cart was not sent)
    assert value("shelfq_streams_arm_transitions_total", "longterm") == 2
    assert value("shelfq_streams_arm_impressions_total", "myopic") == 2
    assert value("shelfq_streams_arm_sessions_total", "myopic") == 2
    assert value("shelfq_streams_arm_reward_total", "longterm") == 6.0
    assert value("shelfq_streams_arm_reward_total", "myopic") == 12.0
    assert value("shelfq_streams_arm_clicks_total", "myopic") == 2 and value("shelfq_streams_arm_purchases_total", "myopic") == 2
    assert m.registry.get_sample_value("shelfq_streams_transitions_total") == 8  # the arm-less ones count overall
    assert m.registry.get_sample_value("shelfq_streams_reward_total") == 24.0


# -- the demo's live figures per arm ---------------------------------------------------------


def test_the_demo_reports_each_arm_over_the_run_and_its_second_half_with_intervals() -> None:
    import numpy as np

    from shelfq.demo.report import live_arms
    from shelfq.simulator.runner import SessionRecord

    rng = np.random.default_rng(0)
    log = []
    for i in range(4000):  # the longterm arm earns 6 per session, the myopic one 4; both 1 in the first half
        arm = ("longterm", "myopic", None)[i % 3]
        ended = float(i) / 4000 * 100
        mean = 1.0 if ended < 50 else {"longterm": 6.0, "myopic": 4.0, None: 2.0}[arm]
        slates = int(rng.integers(1, 6))
        reward = float(rng.poisson(mean))
        log.append(SessionRecord(i % 50, arm, ended, slates, min(slates, int(reward)), int(reward > 3), reward, 2 * reward))
    out = live_arms(log, started=0.0, ended=100.0)
    assert set(out["arms"]) == {"longterm", "myopic"} and out["unassigned_sessions"] == sum(r.arm is None for r in log)
    late = {arm: out["arms"][arm]["second_half"] for arm in ("longterm", "myopic")}
    for arm, expected in (("longterm", 6.0), ("myopic", 4.0)):
        cell = late[arm]["reward_per_session"]
        assert cell["ci95"][0] < expected < cell["ci95"][1]
        assert abs(late[arm]["revenue_per_session"]["mean"] - 2 * cell["mean"]) < 1e-3
        assert 0 < late[arm]["ctr"]["ci95"][0] < late[arm]["ctr"]["mean"] < late[arm]["ctr"]["ci95"][1] <= 1
    assert out["arms"]["longterm"]["all"]["sessions"] == sum(r.arm == "longterm" for r in log)
    ratio = out["longterm_vs_myopic"]
    assert ratio["second_half"]["intervals_separate"] and ratio["second_half"]["ci95"][0] < 1.5 < ratio["second_half"]["ci95"][1]
    assert ratio["all"]["ratio"] < ratio["second_half"]["ratio"]
