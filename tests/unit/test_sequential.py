"""Next-item baselines of ``shelfq bench replay`` (evaluation/sequential.py) and its synthetic
log (evaluation/sequence_log.py): predict then update, against brute-force references."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from shelfq.contracts.events import Feedback, Impression, Item
from shelfq.evaluation.sequence_log import generate
from shelfq.evaluation.sequential import (MarkovChain, Popularity, Positive, Score, catalog, positives, prequential, score,
                                   sessions, summary)
from shelfq.frontend.replay import parse_csv, parse_jsonl


def test_popularity_stays_sorted_by_count_under_random_updates() -> None:
    rng = random.Random(3)
    pop, counts = Popularity(), Counter()
    for step in range(3000):
        item = f"i{min(int(rng.expovariate(0.05)), 199)}"
        pop.update(item)
        counts[item] += 1
        if step % 97 == 0:
            ordered = [counts[i] for i in pop.order]
            assert ordered == sorted(ordered, reverse=True)
            assert sorted(pop.order) == sorted(counts)
            for k in (1, 10, 50):
                top = pop.top(k)
                assert len(top) == min(k, len(counts))
                assert [counts[i] for i in top] == sorted(counts.values(), reverse=True)[:k]
            exclude = set(rng.sample(sorted(counts), min(5, len(counts))))
            top = pop.top(10, exclude=exclude)
            assert not exclude & set(top)
            assert [counts[i] for i in top] == sorted((c for i, c in counts.items() if i not in exclude), reverse=True)[:10]


def test_an_item_reaching_a_count_goes_behind_those_already_there() -> None:
    pop = Popularity()
    for item in ["a", "b", "c", "c", "b"]:
        pop.update(item)
    assert pop.top(3) == ["c", "b", "a"]  # c reached 2 before b
    assert pop.count("c") == 2 and pop.count("z") == 0 and len(pop) == 3


def test_markov_chain_ranks_successors_by_count_then_backs_off_to_popularity() -> None:
    rng = random.Random(5)
    chain = MarkovChain()
    follows: dict[str, Counter[str]] = {}
    last: dict[str, str] = {}
    popular: Counter[str] = Counter()
    for _ in range(2000):
        user, item = f"u{rng.randrange(30)}", f"i{rng.randrange(25)}"
        ranked = chain.top(user, 10)
        assert len(ranked) == len(set(ranked)) == min(10, len(popular))
        successors = follows.get(last.get(user, ""), Counter())
        head = ranked[:min(len(successors), 10)]
        assert [successors[i] for i in head] == sorted(successors.values(), reverse=True)[:len(head)]
        assert all(i not in successors for i in ranked[len(head):])  # the rest is popularity's
        chain.update(user, item)
        if user in last:
            follows.setdefault(last[user], Counter())[item] += 1
        last[user] = item
        popular[item] += 1


def test_prequential_predicts_before_it_learns() -> None:
    events = [Positive("u", "a", float(t)) for t in range(4)]
    scores = prequential(events, k=10)
    for name in ("popularity", "markov"):
        assert [s.hit for s in scores[name]] == [False, True, True, True]  # the first a was never seen before
    assert [s.hit for s in scores["popularity_unseen"]] == [False] * 4  # u always had a already


def test_markov_beats_popularity_on_a_sequential_log_and_not_on_shuffled_sequences() -> None:
    rng = random.Random(0)
    chain = [f"i{i}" for i in range(40)]
    ordered = []
    for t in range(3000):  # each user walks the chain from a random place
        ordered.append((f"u{t % 60}", chain[(t // 60 + 7 * (t % 60)) % 40]))
    events = [Positive(u, i, float(t)) for t, (u, i) in enumerate(ordered)]
    scores = prequential(events, k=5)
    markov, popular = (summary(scores[n], k=5)["hr_at_5"] for n in ("markov", "popularity"))
    assert markov > 0.9 and popular < 0.3
    shuffled = [Positive(e.user, e.item, e.ts) for e in rng.sample(events, len(events))]
    scores = prequential(shuffled, k=5)
    assert summary(scores["markov"], k=5)["hr_at_5"] < 0.3


def test_score_and_summary() -> None:
    assert score(["a", "b", "c"], "b") == Score(True, pytest.approx(1 / math.log2(3)))
    assert score([f"i{n}" for n in range(20)], "i12") == Score(False, 0.0)  # ranked past k=10
    assert score([f"i{n}" for n in range(20)], "i12", k=15).hit
    figures = summary([Score(True, 1.0)] * 3 + [Score(False, 0.0)], start=2)
    assert figures == {"events": 2, "hr_at_10": 0.5, "ndcg_at_10": 0.5, "hr_ci95": [0.0, 1.0]}


def test_positives_are_in_time_order_one_per_item_and_request() -> None:
    log = parse_csv("kind,ts,request_id,user_id,session_id,items,item_id,value\n"
                    "impression,10,r2,u1,s1,a|b,,\n"
                    "click,12,r2,u1,s1,,b,\n"
                    "add_to_cart,13,r2,u1,s1,,b,\n"
                    "purchase,14,r2,u1,s1,,b,9.5\n"
                    "click,3,r1,u2,s2,,a,\n"
                    "click,20,r3,u1,s1,,b,\n"   # the same item on another impression: a new event
                    "exit,21,r3,u1,s1,,,\n")
    assert log.bad == []
    assert positives(log.events) == [Positive("u2", "a", 3.0), Positive("u1", "b", 12.0), Positive("u1", "b", 20.0)]
    assert {i: e.price for i, e in catalog(log.events).items()} == {"a": None, "b": 9.5}


def test_catalog_keeps_the_logs_item_entries() -> None:
    events = [Item(item_id="x", category="c1", price=3.0, title="X", ts=5.0),
              Impression(request_id="r", user_id="u", session_id="s", ts=1.0, items=["y", "x"]),
              Feedback(request_id="r", user_id="u", session_id="s", ts=2.0, event="click", item_id="y")]
    items = catalog(events)
    assert list(items) == ["x", "y"]
    assert (items["x"].category, items["x"].price, items["x"].title) == ("c1", 3.0, "X")
    assert items["y"].category is None


def test_sessions_split_on_the_gap_per_user() -> None:
    events = [Positive("u", "a", 0.0), Positive("u", "b", 1000.0), Positive("v", "a", 1500.0), Positive("u", "c", 2900.0),
              Positive("u", "d", 2901.0)]
    ids, last = sessions(events, gap_s=1800)
    assert ids == ["u-s0", "u-s0", "v-s0", "u-s1", "u-s1"]
    assert last == [False, True, True, False, True]
    with pytest.raises(ValueError):
        sessions(events, gap_s=0)


def test_the_synthetic_log_is_deterministic_valid_and_sequential() -> None:
    lines = generate(users=300, seed=0)
    assert lines == generate(users=300, seed=0) and lines != generate(users=300, seed=1)
    parsed = parse_jsonl(("\n".join(lines) + "\n").encode())
    assert parsed.bad == []
    events = positives(parsed.events)
    assert 2000 <= len(events) <= 6000 and len({e.user for e in events}) == 300
    items = catalog(parsed.events)
    assert len(items) == 300 and all(i.category for i in items.values())
    # Every session ends with an exit naming its last impression.
    exits = [e for e in parsed.events if isinstance(e, Feedback) and e.event == "exit"]
    shown = {e.request_id for e in parsed.events if isinstance(e, Impression)}
    assert exits and all(e.request_id in shown for e in exits)
    scores = prequential(events)
    markov, popular = summary(scores["markov"]), summary(scores["popularity"])
    assert markov["hr_at_10"] > 2 * popular["hr_at_10"]  # what the log is for
    assert markov["hr_ci95"][0] > popular["hr_ci95"][1]


def test_impossible_generator_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        generate(users=0)
    with pytest.raises(ValueError):
        generate(follow=0.8, same_category=0.5)
