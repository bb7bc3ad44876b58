"""The learning benchmark (``shelfq bench policy``) end to end with tiny budgets: the same
pipeline as the full run, its figures in the shape the README and the issue name."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from shelfq.agents.policies import RandomPolicy
from shelfq.evaluation.bench_config import PolicyBenchConfig
from shelfq.evaluation.benchmark import GROUPS, POLICIES, paired_ratio
from shelfq.evaluation.offline import run_seed
from shelfq.evaluation.oracles import ORACLE_POLICIES, OraclePolicy
from shelfq.cli.main import main
from shelfq.simulator.world import World, WorldConfig


def test_quick_run_prints_the_figures_as_one_json_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "policy", "--quick", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    quick = PolicyBenchConfig.quick()
    assert figures["training_seeds"] == quick.training_seeds and figures["eval_seeds"] == quick.eval_seeds
    for group in GROUPS:
        for name in ("longterm_vs_myopic", "longterm_vs_popularity"):
            ratio = figures[group][name]
            assert ratio["pairs"] == (quick.training_seeds * quick.eval_seeds)
            assert ratio["ci95"][0] <= ratio["ratio"] <= ratio["ci95"][1] and ratio["ratio"] > 0
        assert set(figures[group]["policies"]) == set(POLICIES + ORACLE_POLICIES)
        assert figures[group]["ceiling_longterm_vs_myopic"]["ratio"] > 0
        for row in figures[group]["policies"].values():
            assert row["reward_per_session"] >= 0 and 0 <= row["ctr"] <= 1
            lo, hi = row["ci95"]["reward_per_session"]
            assert lo <= row["reward_per_session"] <= hi
    # The oracles read the shoppers' minds: random earns less than either.
    rewards = {n: row["reward_per_session"] for n, row in figures["returning"]["policies"].items()}
    assert min(rewards["oracle-myopic"], rewards["oracle-quality"]) > rewards["random"]
    # Random slates cover the catalog; the greedy learners and popularity show fewer items.
    assert figures["returning"]["policies"]["random"]["catalog_coverage"] > figures["returning"]["policies"]["popularity"]["catalog_coverage"]


def test_paired_ratio_pairs_each_training_seed_with_its_own_evaluation() -> None:
    same = paired_ratio([[2.0, 4.0]], [[2.0, 4.0]])
    assert same == {"ratio": 1.0, "ci95": [1.0, 1.0], "pairs": 2}
    # A single row of baselines (popularity: no training seeds) is paired with every seed's row.
    assert paired_ratio([[2.0, 4.0], [4.0, 8.0]], [[2.0, 4.0]])["ratio"] == 1.5


def test_returning_shoppers_carry_their_logged_histories_and_new_ones_start_empty() -> None:
    config = WorldConfig(items=40, users=20)
    world = World(config, seed=0)
    run_seed(RandomPolicy(), 5, 60, slate_size=5, world=world, users=range(10))
    assert set(world.histories) <= set(range(10)) and world.histories
    before = copy.deepcopy(world.histories)
    run_seed(RandomPolicy(), 6, 10, slate_size=5, world=copy.deepcopy(world), users=range(10, 20))
    assert world.histories == before  # evaluation runs in a copy: every policy meets the same world


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="returning_users"):
        PolicyBenchConfig(returning_users=2000)
    with pytest.raises(ValueError, match="gamma"):
        PolicyBenchConfig(gamma=0.0)


def test_oracles_fill_slates_from_the_worlds_latent_values() -> None:
    from shelfq.agents.policies import Ask
    from shelfq.contracts.events import State
    from shelfq.simulator.oracles import item_values
    world = World(WorldConfig(items=60, users=10), seed=0)
    ask = Ask(State(), world.catalog.ids, 5, user_id=world.user_id(3))
    rng = np.random.default_rng(0)
    myopic = OraclePolicy(world, "oracle-myopic").rank([ask], rng)[0]
    quality = OraclePolicy(world, "oracle-quality").rank([ask], rng)[0]
    attraction, reward = item_values(world, 3)
    first = world.index[myopic.items[0]]
    assert first == int(np.argmax(attraction * reward / (1 + attraction)))  # the best item alone leads
    assert all(world.catalog.quality[world.index[i]] >= 0.5 for i in quality.items)
    assert len(set(quality.items)) == 5 and quality.policy == "oracle-quality"
    with pytest.raises(ValueError, match="user_id"):
        OraclePolicy(world, "oracle-myopic").rank([ask._replace(user_id=None)], rng)
