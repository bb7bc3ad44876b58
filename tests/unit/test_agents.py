"""The agent's pure parts: exact propensities, and the contract every policy keeps."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from agents import exploration
from agents.policies import Ask, DQNPolicy, Explorer, Popularity, PopularityPolicy, RandomPolicy, category_similarity
from contracts.events import Interaction, State, UserState
from learner.artifact import load_model, model_message
from learner.config import LearnerConfig
from learner.dqn import DQN
from learner.slateq import ChoiceModel
from learner.synthetic import bait_or_build

SCORES = np.array([2.0, 1.0, 0.5, -1.0])
SIMILAR = category_similarity(["shoes", "shoes", "hats", None])
QBAR = np.array([1.0, 3.0, 2.0, 0.5])  # SlateQ: values given a click, and the click model
CHOICE = ChoiceModel(attraction=np.array([3.0, 0.5, 1.0, 2.0]), position_odds=np.array([1.0, 0.7, 0.5, 0.4]))


def sampled(draw, n: int = 20_000) -> tuple[Counter, dict]:
    rng = np.random.default_rng(7)
    counts: Counter = Counter()
    logged: dict = {}
    for _ in range(n):
        order, probs = draw(rng)
        key = tuple(order.tolist())
        counts[key] += 1
        p = float(np.prod(probs))
        assert logged.setdefault(key, p) == pytest.approx(p), "the same slate must log the same probability"
    return counts, logged


@pytest.mark.parametrize("name,draw", [
    ("epsilon", lambda rng: exploration.epsilon_greedy(SCORES, 2, epsilon=0.3, rng=rng)),
    ("boltzmann", lambda rng: exploration.boltzmann(SCORES, 2, temperature=0.7, rng=rng)),
    ("epsilon+diversity", lambda rng: exploration.epsilon_greedy(SCORES, 3, epsilon=0.2, rng=rng, diversity=2.0, similarity=SIMILAR)),
    ("boltzmann+diversity", lambda rng: exploration.boltzmann(SCORES, 3, temperature=1.0, rng=rng, diversity=2.0, similarity=SIMILAR)),
    ("epsilon+choice", lambda rng: exploration.epsilon_greedy(QBAR, 3, epsilon=0.3, rng=rng, choice=CHOICE)),
    ("boltzmann+choice", lambda rng: exploration.boltzmann(QBAR, 3, temperature=0.5, rng=rng, choice=CHOICE)),
    ("uniform", lambda rng: exploration.uniform(SCORES, 2, rng=rng)),
    # Whole slates: the last draws are among few open items, which are counted, not rejected.
    ("epsilon, all items", lambda rng: exploration.epsilon_greedy(SCORES, 4, epsilon=0.5, rng=rng)),
    ("uniform, all items", lambda rng: exploration.uniform(SCORES, 4, rng=rng)),
])
def test_logged_propensities_match_sampled_frequencies(name: str, draw) -> None:
    n = 20_000
    counts, logged = sampled(draw, n)
    assert sum(logged.values()) == pytest.approx(1.0, abs=0.02), "unseen slates would carry the rest"
    for slate, p in logged.items():
        tolerance = 4 * np.sqrt(p * (1 - p) / n) + 1e-3
        assert abs(counts[slate] / n - p) < tolerance, (name, slate, counts[slate] / n, p)
    # The first position's propensity is its marginal probability too.
    first: Counter = Counter()
    for slate, c in counts.items():
        first[slate[0]] += c
    rng = np.random.default_rng(8)
    for _ in range(50):
        order, probs = draw(rng)
        assert abs(first[order[0]] / n - probs[0]) < 4 * np.sqrt(probs[0] / n) + 1e-3


# A micro-batch of two requests with different scores, click models and categories.
BATCH_QBAR = np.stack([QBAR, QBAR[::-1]])
BATCH_CHOICE = ChoiceModel(np.stack([CHOICE.attraction, CHOICE.attraction[::-1]]), CHOICE.position_odds,
                           np.array([0.0, 1.5]))
BATCH_SIMILAR = [SIMILAR, category_similarity(["hats", None, "shoes", "hats"])]


@pytest.mark.parametrize("name,draw", [
    ("epsilon+choice", lambda rng: exploration.epsilon_greedy(BATCH_QBAR, 3, epsilon=0.3, rng=rng, choice=BATCH_CHOICE)),
    ("boltzmann+choice", lambda rng: exploration.boltzmann(BATCH_QBAR, 3, temperature=0.5, rng=rng, choice=BATCH_CHOICE)),
    ("boltzmann+diversity", lambda rng: exploration.boltzmann(BATCH_QBAR, 3, temperature=1.0, rng=rng, diversity=2.0,
                                                              similarity=BATCH_SIMILAR)),
    ("uniform", lambda rng: exploration.uniform(BATCH_QBAR, 2, rng=rng)),
])
@pytest.mark.parametrize("row", [0, 1])
def test_a_micro_batch_logs_each_rows_exact_propensities(name: str, draw, row: int) -> None:
    n = 20_000
    counts, logged = sampled(lambda rng: tuple(x[row] for x in draw(rng)), n)
    assert sum(logged.values()) == pytest.approx(1.0, abs=0.02)
    for slate, p in logged.items():
        assert abs(counts[slate] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, (name, row, slate, counts[slate] / n, p)


def test_a_micro_batch_fills_each_row_as_it_would_alone() -> None:
    order, probs = exploration.greedy(BATCH_QBAR, 3, choice=BATCH_CHOICE, diversity=0.5, similarity=BATCH_SIMILAR)
    for row in range(2):
        alone = ChoiceModel(BATCH_CHOICE.attraction[row], CHOICE.position_odds, float(BATCH_CHOICE.no_click_value[row]))
        expected, _ = exploration.greedy(BATCH_QBAR[row], 3, choice=alone, diversity=0.5, similarity=BATCH_SIMILAR[row])
        assert order[row].tolist() == expected.tolist()
    assert order[0].tolist() != order[1].tolist() and probs.tolist() == [[1.0] * 3] * 2
    with pytest.raises(ValueError, match="1 similarity functions for 2 score rows"):
        exploration.greedy(BATCH_QBAR, 3, diversity=0.5, similarity=BATCH_SIMILAR[:1])


def test_diversity_pushes_a_second_item_of_the_same_category_down() -> None:
    plain, _ = exploration.greedy(SCORES, 2)
    diverse, _ = exploration.greedy(SCORES, 2, diversity=2.0, similarity=SIMILAR)
    assert plain.tolist() == [0, 1] and diverse.tolist() == [0, 2]


def test_the_choice_model_leaves_out_bait_that_takes_clicks_from_better_items() -> None:
    qbar, choice = np.array([1.0, 10.0, 2.0]), ChoiceModel(np.array([4.0, 0.25, 1.0]), np.ones(3))
    # Shown alone, bait is worth 4 * 1 / 5 = 0.8, but next to the gem it lowers the slate's value.
    order, _ = exploration.greedy(qbar, 2, choice=choice)
    assert order.tolist() == [1, 2]
    # Position odds change what the second position is worth, not which items compete.
    order, _ = exploration.greedy(qbar, 2, choice=choice._replace(position_odds=np.array([1.0, 0.1, 0.1])))
    assert order.tolist() == [1, 2]


def test_minus_infinite_scores_still_give_distinct_items_and_propensities() -> None:
    scores, rng = np.array([0.0, -np.inf, -np.inf]), np.random.default_rng(0)
    for fill in (lambda: exploration.greedy(scores, 3),
                 lambda: exploration.epsilon_greedy(scores, 3, epsilon=0.2, rng=rng),
                 lambda: exploration.boltzmann(scores, 3, temperature=1.0, rng=rng)):
        order, probs = fill()
        assert sorted(order.tolist()) == [0, 1, 2] and order[0] == 0
        assert np.all((probs > 0) & (probs <= 1)), probs


def test_impossible_slates_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="slate of 5 from 4"):
        exploration.greedy(SCORES, 5)
    with pytest.raises(ValueError, match="epsilon"):
        exploration.epsilon_greedy(SCORES, 2, epsilon=1.5, rng=rng)
    with pytest.raises(ValueError, match="temperature"):
        exploration.boltzmann(SCORES, 2, temperature=0, rng=rng)


SMALL = LearnerConfig(hash_buckets=256, context_buckets=16, embedding_dim=8, hidden_dim=8, history_length=4,
                      batch_size=32, learning_starts=32, replay_capacity=512, candidates=4, device="cpu")
ITEMWISE = dataclasses.replace(SMALL, objective="item")


def trained_model(config: LearnerConfig = SMALL):
    dqn = DQN(config)
    for t in bait_or_build(300):
        dqn.add(t)
    for _ in range(30):
        dqn.train_step(dqn.sample())
    value, headers = model_message(dqn.online, config, version=3, created_ts=1.0)
    return dqn, load_model(value, headers.to_headers())


def popularity() -> Popularity:
    pop = Popularity()
    pop.observe(UserState(user_id="u", ts=10.0, history=[Interaction(item_id="c", event="purchase", ts=9.0),
                                                         Interaction(item_id="a", event="click", ts=10.0)]))
    return pop


POLICIES = {
    "dqn": lambda: DQNPolicy(trained_model()[1], Explorer("epsilon", epsilon=0.2)),
    "dqn-boltzmann": lambda: DQNPolicy(trained_model()[1], Explorer("boltzmann", temperature=0.5)),
    "dqn-itemwise": lambda: DQNPolicy(trained_model(ITEMWISE)[1], Explorer("epsilon", epsilon=0.2)),
    "popularity": lambda: PopularityPolicy(popularity()),
    "random": lambda: RandomPolicy(),
}
ASKS = [Ask(State(history=[Interaction(item_id="b", event="click", ts=1.0)], context={"device": "app"}),
            ["a", "b", "c", "d", "e", "f"], 3),
        Ask(State(), ["x", "y", "a"], 3), Ask(State(), ["a", "b", "c", "d"], 1),
        Ask(State(), ["g", "h", "i", "j", "k", "a"], 3)]  # filled in one batch with the first


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_keeps_the_slate_contract(name: str) -> None:
    policy = POLICIES[name]()
    first = policy.rank(ASKS, np.random.default_rng(42))
    again = policy.rank(ASKS, np.random.default_rng(42))
    assert first == again, "the same seed gives the same slates"
    for ask, choice in zip(ASKS, first):
        assert len(choice.items) == ask.slate_size == len(set(choice.items))
        assert set(choice.items) <= set(ask.candidates)
        assert len(choice.scores) == len(choice.propensities) == ask.slate_size
        assert all(0 < p <= 1 for p in choice.propensities) and all(np.isfinite(choice.scores))
        assert choice.policy == policy.name
        assert (choice.model_version is not None) == (policy.name == "dqn")


@pytest.mark.parametrize("config", [SMALL, ITEMWISE], ids=["slateq", "itemwise"])
def test_served_scores_are_the_learners(config: LearnerConfig) -> None:
    dqn, model = trained_model(config)
    policy = DQNPolicy(model, Explorer("greedy"))
    state = State(history=[Interaction(item_id="build", event="click", ts=1.0)])
    served = policy.scores([Ask(state, ["bait", "build", "new"], 2)])[0]
    assert np.allclose(served, dqn.score(state, ["bait", "build", "new"]), atol=1e-5)
    assert policy.rank([Ask(state, ["bait", "build"], 2)], np.random.default_rng(0))[0].propensities == [1.0, 1.0]


def test_popularity_counts_each_interaction_once_and_weighs_purchases() -> None:
    pop = popularity()
    before = pop.score(["a", "c"])
    pop.observe(UserState(user_id="u", ts=10.0, history=[Interaction(item_id="c", event="purchase", ts=9.0),
                                                         Interaction(item_id="a", event="click", ts=10.0)]))
    assert np.allclose(pop.score(["a", "c"]), before)  # the same state again adds nothing
    assert before[1] > before[0]
