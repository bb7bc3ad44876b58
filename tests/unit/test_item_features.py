"""Cold start by category: an item never shown is scored as the items of its kind, in the
learner and, for an item newer than the served model, in the agent."""

from __future__ import annotations

import numpy as np

from shelfq.agents.policies import Ask, DQNPolicy, Explorer
from shelfq.contracts.events import Item, State
from shelfq.learner.artifact import load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.synthetic import T0, _transition

GOOD = [Item(item_id=f"kettle-{i}", category="kitchen", price=30.0, ts=T0) for i in range(6)]
BAD = [Item(item_id=f"toy-{i}", category="toys", price=3.0, ts=T0) for i in range(6)]
NEW_GOOD = Item(item_id="kettle-new", category="kitchen", price=30.0, ts=T0)
NEW_BAD = Item(item_id="toy-new", category="toys", price=3.0, ts=T0)
CONFIG = LearnerConfig(gamma=0.0, objective="item", hash_buckets=1024, context_buckets=16, embedding_dim=16,
                       hidden_dim=16, history_length=4, batch_size=64, learning_starts=64, replay_capacity=4096,
                       candidates=8, learning_rate=3e-3, device="cpu")


def _trained(known: list[Item]) -> DQN:
    dqn = DQN(CONFIG)
    dqn.set_items(known)
    rng = np.random.default_rng(0)
    start = State(history=[])
    for i in range(1500):  # kitchen items sell (5), toys are ignored (0); the new ones never show
        item = GOOD[rng.integers(6)] if rng.random() < 0.5 else BAD[rng.integers(6)]
        dqn.add(_transition(i, start, item.item_id, 5.0 if item in GOOD else 0.0, start, True))
    for _ in range(300):
        dqn.train_step(dqn.sample())
    return dqn


def test_a_new_item_is_scored_as_its_category() -> None:
    dqn = _trained(GOOD + BAD + [NEW_GOOD, NEW_BAD])
    new_good, new_bad = dqn.score(State(history=[]), [NEW_GOOD.item_id, NEW_BAD.item_id])
    assert new_good > new_bad + 1.0, (new_good, new_bad)


def test_the_agent_gives_an_item_newer_than_its_model_its_category() -> None:
    dqn = _trained(GOOD + BAD)  # the model was published before the new items were on `items`
    value, headers = model_message(dqn.online, dqn.config, version=1)
    policy = DQNPolicy(load_model(value, headers.to_headers()), Explorer("greedy"))
    ask = Ask(State(history=[]), [NEW_GOOD.item_id, NEW_BAD.item_id], 1)
    before = policy.scores([ask])[0]
    assert abs(before[0] - before[1]) < 1e-4  # unknown rows: two average items
    policy.know_items([NEW_GOOD, NEW_BAD])
    after = policy.scores([ask])[0]
    assert after[0] > after[1] + 1.0, after
    # What the model already knew is not overwritten by the agent's view of the catalog.
    policy.know_items([Item(item_id=GOOD[0].item_id, category="toys", price=3.0, ts=T0)])
    known = policy.scores([Ask(State(history=[]), [GOOD[0].item_id], 1)])[0][0]
    assert known > after[1] + 1.0


def test_a_model_whose_item_table_indexes_past_its_embeddings_is_refused() -> None:
    import pytest
    import torch

    from shelfq.contracts.errors import EventError
    from shelfq.learner.item_features import CATEGORY_BUCKETS
    from shelfq.learner.network import QNetwork

    config = LearnerConfig(hash_buckets=64, context_buckets=8)
    for row, column, value in ((5, 0, CATEGORY_BUCKETS), (5, 1, -1), (0, 0, 3)):
        network = QNetwork(config)
        with torch.no_grad():
            network.item_attributes[row, column] = value
        value_bytes, headers = model_message(network, config, version=1)
        with pytest.raises(EventError) as info:
            load_model(value_bytes, headers.to_headers())
        assert info.value.field == "value.item_attributes", (row, column, value)
