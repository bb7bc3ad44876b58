"""The shopper simulator: reproducible, its choice model as its formula says, and a world where
click-greedy is not optimal over a session (shown with oracle policies, not the learner)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shelfq.contracts.errors import ConfigError
from shelfq.evaluation.offline import mean_ci95
from shelfq.simulator.env import ShopperEnv, transitions_of
from shelfq.simulator.oracles import session_rewards
from shelfq.simulator.world import Session, World, WorldConfig


def _play(env: ShopperEnv, seed: int, steps: int = 40) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    env.reset(seed=seed)
    for _ in range(steps):
        action = rng.choice(env.config.items, env.slate_size, replace=False)
        _obs, reward, terminated, truncated, info = env.step(action)
        out.append((tuple(action), reward, terminated, truncated, tuple(info["feedback"])))
        if terminated or truncated:
            env.reset()
    return out


def test_seeded_runs_repeat_exactly() -> None:
    first = _play(ShopperEnv(WorldConfig(items=60, users=20), slate_size=5, world_seed=4), seed=9)
    again = _play(ShopperEnv(WorldConfig(items=60, users=20), slate_size=5, world_seed=4), seed=9)
    other = _play(ShopperEnv(WorldConfig(items=60, users=20), slate_size=5, world_seed=5), seed=9)
    assert first == again
    assert first != other


def test_the_catalog_is_the_shops_and_the_seed_draws_the_shoppers() -> None:
    a, b = World(WorldConfig(items=30, users=5), seed=1), World(WorldConfig(items=30, users=5), seed=2)
    assert a.catalog.ids == b.catalog.ids and np.array_equal(a.catalog.quality, b.catalog.quality)
    assert not np.array_equal(a.shoppers[0].interest, b.shoppers[0].interest)


def test_click_shares_match_the_logit_formula() -> None:
    world = World(WorldConfig(items=40, users=3), seed=0)
    slate = [3, 17, 8, 25, 30]
    session = world.start_session(user=1, seed=0)
    expected = session.click_probabilities(slate)
    # The formula, written out independently of the implementation.
    c, shopper, cfg = world.catalog, world.shoppers[1], world.config
    u = [shopper.interest[c.category[j]] + c.appeal[j] - shopper.price_sensitivity * math.log(c.price[j] / world.median_price)
         - cfg.position_decay * k for k, j in enumerate(slate)]
    denominator = math.exp(cfg.no_click_utility) + sum(math.exp(x) for x in u)
    assert expected == pytest.approx([math.exp(x) / denominator for x in u])
    # Empirical shares of many independent first responses (fresh sessions of the same
    # shopper, whose interests do not drift: drift 0, no reinforcement).
    still = World(WorldConfig(items=40, users=3, interest_drift=0.0, interest_from_click=0.0), seed=0)
    n, counts = 20_000, np.zeros(len(slate) + 1)
    for i in range(n):
        outcome = Session(still, 1, np.random.default_rng(i)).respond(slate)
        counts[len(slate) if outcome.position is None else outcome.position] += 1
    shares = counts / n
    for k, p in enumerate(expected):
        assert abs(shares[k] - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    assert abs(shares[-1] - (1 - expected.sum())) < 0.01


def test_click_greedy_is_not_optimal_over_a_session() -> None:
    """The oracle that maximises each slate's expected reward shows bait; one that gives up
    some of it for quality earns more per session, because sessions last longer."""
    greedy = [session_rewards("click-greedy", seed) for seed in range(5)]
    patient = [session_rewards("quality-aware", seed) for seed in range(5)]
    g_mean, _g_lo, g_hi = mean_ci95([r for r, _len in greedy])
    p_mean, p_lo, _p_hi = mean_ci95([r for r, _len in patient])
    assert p_lo > g_hi, (greedy, patient)
    assert np.mean([n for _r, n in patient]) > 1.5 * np.mean([n for _r, n in greedy])


def test_env_rejects_impossible_actions_and_settings() -> None:
    env = ShopperEnv(WorldConfig(items=20, users=2), slate_size=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="distinct"):
        env.step([1, 1, 2])
    with pytest.raises(ValueError, match="slate_size"):
        ShopperEnv(WorldConfig(items=5, users=2), slate_size=6)
    with pytest.raises(ConfigError, match="bait_share"):
        WorldConfig(bait_share=1.5)


def test_observations_fit_their_space_and_history_carries_over_sessions() -> None:
    env = ShopperEnv(WorldConfig(items=30, users=1), slate_size=10)
    obs, _info = env.reset(seed=1)
    clicked = 0
    for _ in range(200):
        obs, _r, terminated, truncated, info = env.step(list(range(10)))
        assert env.observation_space.contains(obs)
        clicked += info["outcome"].clicked is not None
        if terminated or truncated:
            obs, info = env.reset()
            assert len(info["state"].history) == min(50, len(env.histories[env.session.user]))
    assert clicked > 0 and env.histories[env.session.user]


def test_transitions_are_labelled_as_the_join_labels_them() -> None:
    from shelfq.contracts.events import State

    feedback = [("click", "b", None), ("add_to_cart", "b", None), ("purchase", "b", 12.0), ("exit", None, None)]
    ts = transitions_of("r1", "u1", "s1", State(), ["a", "b", "c"], feedback, 5.0, [0.5, 0.4, 0.3], "dqn", 2)
    assert [t.transition_id for t in ts] == ["r1:0", "r1:1", "r1:2"]
    assert [t.reward for t in ts] == [0.0, 8.0, 0.0]
    assert ts[1].reward_parts == {"click": 1, "add_to_cart": 1, "purchase": 1}
    assert [t.done for t in ts] == [True, False, True]  # a purchased item closes at its purchase
    assert [i.event for i in ts[0].next_state.history] == ["click", "add_to_cart", "purchase"]
    assert ts[2].propensity == 0.3 and ts[0].model_version == 2


def test_the_comparison_is_reproducible_and_its_intervals_hold_the_mean() -> None:
    from shelfq.agents.policies import RandomPolicy
    from shelfq.evaluation.offline import compare, run_seed

    config = WorldConfig(items=50, users=30)
    first = run_seed(RandomPolicy(), seed=3, sessions=40, config=config, slate_size=5, concurrent=8)
    again = run_seed(RandomPolicy(), seed=3, sessions=40, config=config, slate_size=5, concurrent=8)
    assert first == again
    assert 0 < first["ctr"] < 1 and first["session_length"] >= 1 and 0 < first["catalog_coverage"] <= 1
    table = compare({"random": RandomPolicy}, seeds=[0, 1, 2], sessions=30, config=config, slate_size=5)
    cell = table["random"]["reward_per_session"]
    assert len(cell["per_seed"]) == 3 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    assert cell["mean"] == pytest.approx(np.mean(cell["per_seed"]), abs=1e-3)
