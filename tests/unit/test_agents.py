"""The agent's pure parts: exact propensities, and the contract every policy keeps."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from shelfq.agents import exploration
from shelfq.agents.exclusion import allowed_mask, excluded_items
from shelfq.agents.policies import (CACHE_FROM, Ask, DQNPolicy, Explorer, Popularity, PopularityPolicy, RandomPolicy,
                             category_similarity)
from shelfq.agents.service import form_ask
from shelfq.contracts.events import Interaction, Request, State, UserState
from shelfq.learner.artifact import load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.slateq import ChoiceModel
from shelfq.learner.synthetic import bait_or_build

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


# -- exclusions: what a slate must not hold ------------------------------------------------------

ALLOW = np.array([True, False, True, True])  # item 1 is excluded
SUBSET = np.flatnonzero(ALLOW)  # the allowed items, as a candidate list of their own would hold them


@pytest.mark.parametrize("name,masked,alone", [
    ("epsilon", lambda rng: exploration.epsilon_greedy(SCORES, 2, epsilon=0.4, rng=rng, allowed=ALLOW),
     lambda rng: exploration.epsilon_greedy(SCORES[SUBSET], 2, epsilon=0.4, rng=rng)),
    ("epsilon, all allowed items", lambda rng: exploration.epsilon_greedy(SCORES, 3, epsilon=0.5, rng=rng, allowed=ALLOW),
     lambda rng: exploration.epsilon_greedy(SCORES[SUBSET], 3, epsilon=0.5, rng=rng)),
    ("boltzmann", lambda rng: exploration.boltzmann(SCORES, 2, temperature=0.7, rng=rng, allowed=ALLOW),
     lambda rng: exploration.boltzmann(SCORES[SUBSET], 2, temperature=0.7, rng=rng)),
    ("boltzmann+diversity", lambda rng: exploration.boltzmann(SCORES, 3, temperature=1.0, rng=rng, diversity=2.0,
                                                              similarity=SIMILAR, allowed=ALLOW),
     lambda rng: exploration.boltzmann(SCORES[SUBSET], 3, temperature=1.0, rng=rng, diversity=2.0,
                                       similarity=category_similarity(["shoes", "hats", None]))),
    ("epsilon+choice", lambda rng: exploration.epsilon_greedy(QBAR, 2, epsilon=0.3, rng=rng, choice=CHOICE, allowed=ALLOW),
     lambda rng: exploration.epsilon_greedy(QBAR[SUBSET], 2, epsilon=0.3, rng=rng,
                                            choice=CHOICE._replace(attraction=CHOICE.attraction[SUBSET]))),
    ("uniform", lambda rng: exploration.uniform(SCORES, 2, rng=rng, allowed=ALLOW),
     lambda rng: exploration.uniform(SCORES[SUBSET], 2, rng=rng)),
])
def test_a_masked_draw_is_the_draw_over_the_allowed_items_alone(name: str, masked, alone) -> None:
    n = 20_000
    counts, logged = sampled(masked, n)
    assert all(1 not in slate for slate in counts), "an excluded item was drawn"
    _, expected = sampled(alone, 2_000)
    expected = {tuple(int(SUBSET[i]) for i in slate): p for slate, p in expected.items()}
    assert set(logged) <= set(expected)
    for slate, p in logged.items():  # the same slate logs the propensity it has without the excluded item
        assert p == pytest.approx(expected[slate]), (name, slate)
        assert abs(counts[slate] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, (name, slate, counts[slate] / n, p)
    assert sum(logged.values()) == pytest.approx(1.0, abs=0.02)


def test_each_row_of_a_micro_batch_has_its_own_mask() -> None:
    allowed = np.array([[True, False, True, True], [False, False, True, True]])
    n = 20_000
    for row, k in ((0, 2), (1, 2)):
        counts, logged = sampled(lambda rng: tuple(x[row] for x in exploration.epsilon_greedy(
            np.stack([SCORES, SCORES]), k, epsilon=0.5, rng=rng, allowed=allowed)), n)
        assert all(allowed[row, list(slate)].all() for slate in counts)
        for slate, p in logged.items():
            assert abs(counts[slate] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3, (row, slate)
    with pytest.raises(ValueError, match="slate of 3 from 2 allowed candidates"):
        exploration.greedy(np.stack([SCORES, SCORES]), 3, allowed=allowed)


def test_the_history_and_the_request_say_what_is_excluded() -> None:
    history = [Interaction(item_id="bought", event="purchase", ts=1.0), Interaction(item_id="carted", event="add_to_cart", ts=2.0),
               Interaction(item_id="clicked", event="click", ts=3.0)]
    assert excluded_items(None, history, "none") == set()
    assert excluded_items(["hidden"], history, "none") == {"hidden"}
    assert excluded_items(None, history, "purchased") == {"bought"}
    assert excluded_items(["hidden"], history, "clicked") == {"hidden", "bought", "carted", "clicked"}
    catalog = ["a", "bought", "c", "hidden"]
    positions = {c: i for i, c in enumerate(catalog)}
    for pos in (None, positions):
        assert allowed_mask(catalog, {"hidden", "bought", "elsewhere"}, pos).tolist() == [True, False, True, False]
        assert allowed_mask(catalog, {"elsewhere"}, pos) is None
        assert allowed_mask(catalog, set(), pos) is None


def test_an_ask_leaves_out_what_the_request_and_the_history_exclude() -> None:
    user = UserState(user_id="u", ts=5.0, history=[Interaction(item_id="b", event="purchase", ts=4.0),
                                                   Interaction(item_id="c", event="click", ts=5.0)])
    req = Request(request_id="r", user_id="u", ts=6.0, slate_size=4, exclude=["d"])
    catalog = ["a", "b", "c", "d", "e"]
    ask = form_ask(req, user, catalog, "purchased", 1000)
    assert ask.allowed.tolist() == [True, False, True, False, True] and ask.slate_size == 3  # shorter, not padded
    assert ask.candidates is catalog, "the catalog list object is kept (its item vectors are cached)"
    assert ask.state.history == user.history
    calls = []
    positions = lambda: calls.append(1) or {c: i for i, c in enumerate(catalog)}  # noqa: E731
    assert form_ask(req, user, catalog, "clicked", 1000, positions).allowed.tolist() == [True, False, False, False, True]
    assert form_ask(Request(request_id="r", user_id="u", ts=6.0), None, catalog, "purchased", 1000, positions).allowed is None
    assert len(calls) == 1, "the positions are only looked up when something is excluded"
    assert form_ask(Request(request_id="r", user_id="u", ts=6.0, exclude=catalog), None, catalog, "none", 1000) is None
    assert form_ask(Request(request_id="r", user_id="u", ts=6.0, slate_size=9), None, catalog, "none", 2).slate_size == 2


MASKED_ASKS = [Ask(ASKS[0].state, ASKS[0].candidates, 3, np.array([False, True, False, True, True, True])),
               Ask(State(), ["x", "y", "a"], 2, np.array([True, False, True])),
               Ask(State(), ["a", "b", "c", "d"], 1, np.array([False, False, False, True])),
               ASKS[3]]  # no mask, filled in one batch with the first


@pytest.mark.parametrize("limit", [None, 3], ids=["all", "shortlisted"])
@pytest.mark.parametrize("name", POLICIES)
def test_no_policy_puts_an_excluded_item_in_a_slate(name: str, limit: int | None) -> None:
    policy = POLICIES[name]()
    for seed in range(30):
        choices = policy.rank(MASKED_ASKS, np.random.default_rng(seed), limit=limit)
        assert choices == policy.rank(MASKED_ASKS, np.random.default_rng(seed), limit=limit)
        for ask, choice in zip(MASKED_ASKS, choices):
            allowed = set(ask.candidates) if ask.allowed is None else {c for c, ok in zip(ask.candidates, ask.allowed) if ok}
            assert len(choice.items) == ask.slate_size == len(set(choice.items)) == len(choice.propensities)
            assert set(choice.items) <= allowed, (name, seed, choice.items)
            assert all(0 < p <= 1 for p in choice.propensities) and all(np.isfinite(choice.scores))
    assert policy.rank(MASKED_ASKS[2:3], np.random.default_rng(0), limit=limit)[0].items == ["d"]


@pytest.mark.parametrize("name,limit", [("popularity", None), ("popularity", 2), ("random", None), ("random", 2)])
def test_masked_fallback_slates_log_exact_propensities(name: str, limit: int | None) -> None:
    # Five candidates, two excluded, maybe a shortlist of two: the logged probability of each
    # slate matches its frequency.
    policy = POLICIES[name]()
    ask = Ask(State(), ["a", "b", "c", "d", "e"], 2, np.array([True, False, True, False, True]))
    n = 6_000

    def draw(rng):
        choice = policy.rank([ask], rng, limit=limit)[0]
        return np.array(choice.items), np.array(choice.propensities)

    counts, logged = sampled(draw, n)
    assert {x for slate in counts for x in slate} <= {"a", "c", "e"}
    if name == "random":
        assert len(counts) == 6, "every ordered pair of the three allowed items"
    for slate, p in logged.items():
        assert abs(counts[slate] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 2e-3, (slate, counts[slate] / n, p)
    assert sum(logged.values()) == pytest.approx(1.0, abs=0.02)


def test_masks_keep_the_catalogs_item_vectors_cached() -> None:
    policy = POLICIES["dqn"]()
    catalog = [f"sku-{i}" for i in range(CACHE_FROM)]
    computed = []
    network = policy.model.network
    item_vectors = network.item_vectors
    network.item_vectors = lambda buckets: computed.append(len(buckets)) or item_vectors(buckets)
    try:
        for seed in range(3):
            masked = np.ones(len(catalog), bool)
            masked[seed * 7: seed * 7 + 5] = False
            asks = [Ask(State(), catalog, 4, masked), Ask(State(), catalog, 4)]
            choices = policy.rank(asks, np.random.default_rng(seed))
            assert not set(choices[0].items) & set(catalog[seed * 7: seed * 7 + 5])
    finally:
        network.item_vectors = item_vectors
    assert computed == [CACHE_FROM], "one pass over the catalog for all batches, masked or not"


@pytest.mark.parametrize("with_attributes,with_table", [(True, False), (False, False), (True, True)])
def test_a_batchs_shared_candidates_get_the_cross_features_of_their_own(with_attributes: bool, with_table: bool) -> None:
    """The agent's candidates (the catalog, [K]) are counted per history entry; a batch whose rows
    each list the same candidates ([B, K]) is counted by comparing them all: the same floats,
    with item rows that collide, padding, unknown categories and the newest entry's flags."""
    import torch

    from shelfq.learner.affinity import affinity

    g = torch.Generator().manual_seed(3)
    B, L, K, rows = 7, 10, 300, 200  # fewer rows than candidates: many share one
    items = torch.randint(0, rows, (B, L), generator=g)
    items[:, :3] = 0  # left padding
    items[0] = 0  # a row without history
    items[1, -1] = 0  # and one whose newest entry is padding
    events = torch.randint(1, 4, (B, L), generator=g) * (items != 0)
    candidates = torch.randint(1, rows, (K,), generator=g)
    candidates[:5] = items[2, -1]  # the newest item, five times
    attributes = torch.randint(0, 6, (rows, 2), generator=g) if with_attributes else None
    table = (torch.randint(0, rows, (rows, 4), generator=g, dtype=torch.int32),
             torch.randint(0, 5, (rows, 4), generator=g).float()) if with_table else None
    shared = affinity(items, events, candidates, attributes, table, prior=with_table)
    own = affinity(items, events, candidates.expand(B, -1), attributes, table, prior=with_table)
    assert torch.equal(shared, own)
    assert shared[2, :5, 6].eq(1).all()  # the newest-item flag (after the six counts), on each of the five
    assert shared.abs().sum() > 0 and shared[0, :, :6].eq(0).all()


def test_a_slateq_fill_is_the_greedy_slate_under_its_click_model() -> None:
    """``_fill`` computes each position's assortment gains with v * Qbar kept while the position
    odds repeat: exactly what assortment_gains gives, position by position."""
    from shelfq.learner.slateq import assortment_gains

    rng = np.random.default_rng(5)
    qbar, attraction = rng.normal(size=(4, 50)), np.exp(rng.normal(size=(4, 50)))
    odds = np.array([1.0, 1.0, 0.7, 0.7, 0.7, 0.4])  # repeats, then changes, then past the last
    choice = ChoiceModel(attraction, odds, rng.normal(size=4))
    order, probs = exploration.greedy(qbar, 8, choice=choice)
    for b in range(4):
        num, den, placed = choice.no_click_value[b], 1.0, []
        for j in range(8):
            v = attraction[b] * odds[min(j, len(odds) - 1)]
            gains = assortment_gains(qbar[b], v, num, den)
            gains[placed] = -np.inf
            best = int(np.argmax(gains))
            placed.append(best)
            num, den = num + v[best] * qbar[b, best], den + v[best]
        assert order[b].tolist() == placed
    assert probs.tolist() == np.ones((4, 8)).tolist()
