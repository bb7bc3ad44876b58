"""The next-clicks table (``learner.next_clicks``): bounded counts of what was clicked after
what, learnt from, carried in models and checkpoints, and checked when a model is loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shelfq.contracts.errors import ConfigError, EventError
from shelfq.contracts.events import Interaction, State
from shelfq.learner.artifact import load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.next_clicks import NextClicks
from shelfq.learner.synthetic import _transition
from tests.unit.test_learner import SMALL

ITEMS = [f"sku-{i}" for i in range(40)]


def chain_transitions(n: int, seed: int = 0) -> list:
    """Shoppers of a shop whose items form one chain: after item i, a slate of 5 random items
    plus i+1 is shown, and i+1 is clicked (reward 1); the other items shown are not clicked."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        i = int(rng.integers(0, len(ITEMS) - 1))
        state = State(history=[Interaction(item_id=ITEMS[i], event="click", ts=1.0)])
        nxt = ITEMS[i + 1]
        others = [ITEMS[j] for j in rng.choice(len(ITEMS), 5, replace=False) if ITEMS[j] != nxt][:4]
        slate = [nxt, *others]
        after = State(history=[*state.history, Interaction(item_id=nxt, event="click", ts=2.0)])
        for position, item in enumerate(slate):
            clicked = item == nxt
            out.append(_transition(k, state, item, 1.0 if clicked else 0.0, after if clicked else state, done=True,
                                   user=f"u-{k % 50}", slate=slate, position=position))
    return out


def test_space_saving_keeps_the_frequent_successors_and_stays_bounded() -> None:
    table = NextClicks(rows=8, width=3)
    rng = np.random.default_rng(0)
    # After row 1: row 2 half of the time, row 3 a quarter, the rest spread over rows 4..7.
    clicked = rng.choice([2, 3, 4, 5, 6, 7], size=4000, p=[0.5, 0.25, 0.0625, 0.0625, 0.0625, 0.0625])
    changed = table.observe(np.ones(4000, dtype=np.int64), clicked)
    assert changed.tolist() == [1]
    kept = dict(zip(table.successors[1].tolist(), table.counts[1].tolist()))
    assert 2 in kept and 3 in kept and len(kept) == 3
    assert kept[2] >= (clicked == 2).sum() and kept[2] > kept[3]  # Space-Saving overestimates, never under
    assert table.counts[1].sum() == 4000 and not table.counts[0].any()


def test_the_learner_counts_clicks_after_the_newest_item_and_ranks_the_chain_next() -> None:
    data = chain_transitions(600)
    dqn = DQN(LearnerConfig(gamma=0.0, next_clicks=16, **SMALL))
    for t in data:
        dqn.add(t)
    for _ in range(150):
        dqn.train_step(dqn.sample())
    row_5, row_6 = dqn.features.bucket(ITEMS[5]), dqn.features.bucket(ITEMS[6])
    slots = dqn.online.next_click_rows[row_5].tolist()
    assert row_6 in slots and torch.equal(dqn.online.next_click_rows, dqn.target.next_click_rows)
    # Scored after each item of the chain, the item that follows it comes first for most.
    firsts = [int(np.argmax(dqn.score(State(history=[Interaction(item_id=ITEMS[i], event="click", ts=1.0)]), ITEMS)))
              for i in range(len(ITEMS) - 1)]
    assert np.mean([f == i + 1 for i, f in enumerate(firsts)]) > 0.8, firsts
    # Without the table, the same training gets far fewer of them.
    bare = DQN(LearnerConfig(gamma=0.0, next_clicks=0, **SMALL))
    for t in data:
        bare.add(t)
    for _ in range(150):
        bare.train_step(bare.sample())
    bare_firsts = [int(np.argmax(bare.score(State(history=[Interaction(item_id=ITEMS[i], event="click", ts=1.0)]), ITEMS)))
                   for i in range(len(ITEMS) - 1)]
    assert np.mean([f == i + 1 for i, f in enumerate(bare_firsts)]) < 0.5, bare_firsts


def test_models_carry_the_table_and_the_loader_refuses_a_hostile_one() -> None:
    config = LearnerConfig(next_clicks=16, **SMALL)
    dqn = DQN(config)
    for t in chain_transitions(50):
        dqn.add(t)
    value, headers = model_message(dqn.online, config, version=1)
    loaded = load_model(value, headers.to_headers())
    assert torch.equal(loaded.network.next_click_rows, dqn.online.next_click_rows)
    assert torch.equal(loaded.network.next_click_counts, dqn.online.next_click_counts)
    for name, poison in (("next_click_rows", config.hash_buckets), ("next_click_rows", -1), ("next_click_counts", -1.0)):
        bad = DQN(config)
        getattr(bad.online, name)[3, 0] = poison
        value, headers = model_message(bad.online, config, version=2)
        with pytest.raises(EventError, match="next_click"):
            load_model(value, headers.to_headers())


def test_a_model_without_the_table_still_loads() -> None:
    config = LearnerConfig(next_clicks=0, **SMALL)
    value, headers = model_message(DQN(config).online, config, version=1)
    loaded = load_model(value, headers.to_headers())
    assert loaded.config.next_clicks == 0 and not hasattr(loaded.network, "next_click_rows")


def _first_by_click_logit(dqn: DQN) -> float:
    """After each item of the chain, the share of items whose follower has the highest click logit."""
    rows = dqn.item_rows(ITEMS)
    hits = []
    for i in range(len(ITEMS) - 1):
        user = dqn.online.user(*dqn.state_tensors([State(history=[Interaction(item_id=ITEMS[i], event="click", ts=1.0)])]))
        hits.append(int(torch.argmax(dqn.online.click_logits(user, rows)[0])) == i + 1)
    return float(np.mean(hits))


def test_the_prior_gives_the_chain_s_odds_before_any_gradient_step() -> None:
    data = chain_transitions(600)
    with_prior, without = DQN(LearnerConfig(next_clicks=16, next_click_prior=True, **SMALL)), DQN(
        LearnerConfig(next_clicks=16, **SMALL))
    for dqn in (with_prior, without):
        for t in data:
            dqn.add(t)
    assert with_prior.step == without.step == 0
    assert _first_by_click_logit(with_prior) > 0.8  # (hashed rows: a few of the 40 items share one)
    # Without it an untrained network's cross weights are zero: every item has the same logit.
    rows = without.item_rows(ITEMS)
    user = without.online.user(*without.state_tensors([State(history=[Interaction(item_id=ITEMS[5], event="click", ts=1.0)])]))
    logits = without.online.click_logits(user, rows)[0]
    assert float(logits.max() - logits.min()) < 1e-5
    # The term is the chain's add-one log estimate: item 6 followed item 5 every time it was counted.
    row = without.features.bucket(ITEMS[5])
    total = float(with_prior.online.next_click_counts[row].sum())
    user = with_prior.online.user(*with_prior.state_tensors([State(history=[Interaction(item_id=ITEMS[5], event="click",
                                                                                        ts=1.0)])]))
    logits = with_prior.online.click_logits(user, rows)[0]
    assert abs(float(logits[6] - logits[7]) - np.log1p(total)) < 1e-4  # 7 never followed 5


def test_models_carry_the_prior_setting_and_older_models_load_without_it() -> None:
    config = LearnerConfig(next_clicks=16, next_click_prior=True, **SMALL)
    value, headers = model_message(DQN(config).online, config, version=1)
    loaded = load_model(value, headers.to_headers())
    assert loaded.config.next_click_prior and loaded.network.next_click_prior
    older = LearnerConfig(next_clicks=16, **SMALL)
    value, headers = model_message(DQN(older).online, older, version=1)
    del headers.config["next_click_prior"]  # a model from before the setting
    assert not load_model(value, headers.to_headers()).network.next_click_prior


def test_the_prior_needs_the_table() -> None:
    with pytest.raises(ConfigError, match="next_click_prior"):
        LearnerConfig(next_click_prior=True, **SMALL)
