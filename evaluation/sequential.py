"""Next-item prediction on a log of positive events, predict then update: the baselines and the
figures of ``shelfq bench replay``.

A log's positive events (clicks, add-to-carts, purchases) in time order are the test: before
each event a predictor ranks ``k`` items for its user, the event is scored against that list
(HR@k: the true item is in it; NDCG@k: ``1 / log2(rank + 2)`` at its 0-based rank, else 0),
and only then does the predictor learn the event. Nothing is left out and nothing is seen
ahead: every event is a test case, and every predictor meets the same events in the same order.

- ``Popularity``: the items with most events so far (``exclude`` leaves some out: the user's
  own items, for "popularity of what they have not had yet").
- ``MarkovChain``: a first-order chain, the items most often seen next after the user's
  previous item, topped up from popularity when that item has fewer successors than ``k`` (and
  for a user's first event).

>>> log = [("u1", "c"), ("u2", "c"), ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "c"),
...        ("u3", "a"), ("u3", "b")]
>>> scores = prequential([Positive(user, item, float(t)) for t, (user, item) in enumerate(log)], k=1)
>>> [int(s.hit) for s in scores["popularity"]]   # c is the most popular item throughout
[0, 1, 0, 0, 0, 0, 1, 0, 0]
>>> [int(s.hit) for s in scores["markov"]]       # b follows a, and a follows c, once seen
[0, 1, 0, 0, 1, 1, 1, 1, 1]
>>> summary(scores["markov"], k=1)["hr_at_1"], summary(scores["markov"], start=4, k=1)["hr_at_1"]
(0.6667, 1.0)
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shelfq.contracts.events import Event, Feedback, Impression, Item

K = 10
PREDICTORS = ("popularity", "popularity_unseen", "markov")


@dataclass(frozen=True)
class Positive:
    """One positive event of the log: a user and the item they clicked (or carted, or bought)."""

    user: str
    item: str
    ts: float


@dataclass(frozen=True)
class Score:
    """How one ranked list did on one event."""

    hit: bool
    ndcg: float


def score(ranked: Sequence[str], truth: str, k: int = K) -> Score:
    """HR@k and NDCG@k of ``ranked`` (best first) for the true item.

    >>> score(["a", "b", "c"], "a"), score(["a", "b", "c"], "c").ndcg, score(["a"], "z")
    (Score(hit=True, ndcg=1.0), 0.5, Score(hit=False, ndcg=0.0))
    """
    top = list(ranked[:k])
    if truth not in top:
        return Score(False, 0.0)
    return Score(True, 1.0 / math.log2(top.index(truth) + 2))


def positives(events: Iterable[Event]) -> list[Positive]:
    """The log's positive events in time order (a stable sort: equal ``ts`` keep file order).

    A click, add-to-cart and purchase of one item on one impression are one interaction, at
    its first ``ts``; exits, impressions and catalog items are no positive events.

    >>> from shelfq.contracts.events import Feedback as F
    >>> log = [F(request_id="r1", user_id="u", session_id="s", ts=5.0, event="purchase", item_id="a", value=2.0),
    ...        F(request_id="r1", user_id="u", session_id="s", ts=4.0, event="click", item_id="a"),
    ...        F(request_id="r0", user_id="u", session_id="s", ts=1.0, event="click", item_id="b"),
    ...        F(request_id="r1", user_id="u", session_id="s", ts=6.0, event="exit")]
    >>> [(p.item, p.ts) for p in positives(log)]
    [('b', 1.0), ('a', 4.0)]
    """
    first: dict[tuple[str, str, str], Positive] = {}
    for event in sorted((e for e in events if isinstance(e, Feedback) and e.item_id is not None),
                        key=lambda e: e.ts):
        assert event.item_id is not None
        first.setdefault((event.user_id, event.request_id, event.item_id), Positive(event.user_id, event.item_id, event.ts))
    return list(first.values())  # insertion order is ts order


def catalog(events: Iterable[Event]) -> dict[str, Item]:
    """Every item the log names (shown, interacted with, or a catalog entry), as a catalog
    entry: the log's own entry where it has one (its category, price and title), else a bare
    id with the price of its first purchase, if any.

    >>> from shelfq.contracts.events import Feedback as F, Item as I
    >>> log = [F(request_id="r", user_id="u", session_id="s", ts=1.0, event="purchase", item_id="a", value=3.5),
    ...        I(item_id="b", category="shoes", ts=0.0)]
    >>> {i: (e.category, e.price) for i, e in catalog(log).items()}
    {'a': (None, 3.5), 'b': ('shoes', None)}
    """
    entries: dict[str, Item] = {}
    named: dict[str, float | None] = {}  # every id in the order the log first names it
    for event in events:
        if isinstance(event, Item):
            entries[event.item_id] = event
            named.setdefault(event.item_id, None)
        elif isinstance(event, Impression):
            for item in event.items:
                named.setdefault(item, None)
        elif isinstance(event, Feedback) and event.item_id is not None:
            named.setdefault(event.item_id, None)
            if named[event.item_id] is None and event.event == "purchase" and event.value is not None:
                named[event.item_id] = event.value
    return {item: entries.get(item) or Item(item_id=item, price=price, ts=0.0) for item, price in named.items()}


def sessions(events: Sequence[Positive], gap_s: float) -> tuple[list[str], list[bool]]:
    """Each event's session id (a user's new session starts after ``gap_s`` of log time without
    an event), and whether it is the last event of its session.

    >>> ids, last = sessions([Positive("u", "a", 0.0), Positive("v", "a", 5.0), Positive("u", "b", 60.0),
    ...                       Positive("u", "c", 4000.0)], gap_s=1800)
    >>> ids, last
    (['u-s0', 'v-s0', 'u-s0', 'u-s1'], [False, True, True, True])
    """
    if not gap_s > 0:
        raise ValueError(f"the session gap must be > 0 seconds, got {gap_s}")
    ids: list[str] = []
    last = [True] * len(events)
    previous: dict[str, tuple[int, float, int]] = {}  # user -> (index, ts, session number)
    for i, event in enumerate(events):
        number = 0
        if event.user in previous:
            j, ts, number = previous[event.user]
            if event.ts - ts > gap_s:
                number += 1
            else:
                last[j] = False
        ids.append(f"{event.user}-s{number}")
        previous[event.user] = (i, event.ts, number)
    return ids, last


class Popularity:
    """Items by their count of events so far, most first; an increment costs O(1).

    ``order`` is kept sorted by count (an item that reaches a count goes behind the items that
    already have it; other ties in an order the updates fix, never at random), so a top-k
    costs k steps plus the excluded items passed over.

    >>> p = Popularity()
    >>> for item in "abcbcc":
    ...     p.update(item)
    >>> p.top(2), p.top(3, exclude={"c"}), p.count("b")
    (['c', 'b'], ['b', 'a'], 2)
    """

    def __init__(self) -> None:
        self.order: list[str] = []
        self._pos: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._start: dict[int, int] = {}  # count -> index of its block's first item in order
        self._size: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self.order)

    def count(self, item: str) -> int:
        return self._count.get(item, 0)

    def update(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item], self._count[item] = len(self.order), 0
            self._start.setdefault(0, len(self.order))
            self._size[0] += 1
            self.order.append(item)
        c, i = self._count[item], self._pos[item]
        j = self._start[c]  # swap to the front of its block, then move the block's edge past it
        other = self.order[j]
        self.order[i], self.order[j] = other, item
        self._pos[other], self._pos[item] = i, j
        self._size[c] -= 1
        if self._size[c]:
            self._start[c] = j + 1
        else:
            del self._start[c]
        self._count[item] = c + 1
        self._size[c + 1] += 1
        self._start.setdefault(c + 1, j)

    def top(self, k: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        out: list[str] = []
        for item in self.order:
            if len(out) == k:
                break
            if item not in exclude:
                out.append(item)
        return out


class MarkovChain:
    """A first-order chain over each user's consecutive events, backed off to popularity.

    >>> m = MarkovChain()
    >>> for user, item in [("u", "a"), ("u", "b"), ("v", "a"), ("v", "c"), ("w", "a"), ("w", "b")]:
    ...     m.update(user, item)
    >>> m.top("x", 3), m.top("w", 3)   # x is new: popularity; w's last item is b: nothing follows b yet
    (['a', 'b', 'c'], ['a', 'b', 'c'])
    >>> m.update("x", "a")
    >>> m.top("x", 3)                  # after a: b twice, c once, then popularity
    ['b', 'c', 'a']
    """

    def __init__(self) -> None:
        self.next: dict[str, Counter[str]] = defaultdict(Counter)
        self.last: dict[str, str] = {}
        self.popularity = Popularity()

    def top(self, user: str, k: int) -> list[str]:
        previous = self.last.get(user)
        followers = self.next.get(previous) if previous is not None else None
        out = [item for item, _ in heapq.nlargest(k, followers.items(), key=lambda kv: kv[1])] if followers else []
        if len(out) < k:
            out += self.popularity.top(k - len(out), exclude=set(out))
        return out

    def update(self, user: str, item: str) -> None:
        previous = self.last.get(user)
        if previous is not None:
            self.next[previous][item] += 1
        self.last[user] = item
        self.popularity.update(item)


def prequential(events: Sequence[Positive], k: int = K) -> dict[str, list[Score]]:
    """Each baseline's score on every event, each list ranked before the event is learnt."""
    popularity, chain = Popularity(), MarkovChain()
    seen: dict[str, set[str]] = defaultdict(set)
    out: dict[str, list[Score]] = {name: [] for name in PREDICTORS}
    for event in events:
        out["popularity"].append(score(popularity.top(k), event.item, k))
        out["popularity_unseen"].append(score(popularity.top(k, exclude=seen[event.user]), event.item, k))
        out["markov"].append(score(chain.top(event.user, k), event.item, k))
        popularity.update(event.item)
        chain.update(event.user, event.item)
        seen[event.user].add(event.item)
    return out


def summary(scores: Sequence[Score], start: int = 0, k: int = K) -> dict[str, object]:
    """HR@k and NDCG@k over ``scores[start:]`` (4 places), the events they cover and a normal
    95% interval for HR (``hr ± 1.96 sqrt(hr (1 - hr) / n)``, clipped to [0, 1]).

    >>> summary([Score(True, 1.0), Score(False, 0.0), Score(True, 0.5), Score(False, 0.0)])
    {'events': 4, 'hr_at_10': 0.5, 'ndcg_at_10': 0.375, 'hr_ci95': [0.01, 0.99]}
    >>> summary([])["hr_at_10"] is None
    True
    """
    part = scores[start:]
    n = len(part)
    if not n:
        return {"events": 0, f"hr_at_{k}": None, f"ndcg_at_{k}": None, "hr_ci95": None}
    hr = sum(s.hit for s in part) / n
    half = 1.96 * math.sqrt(hr * (1 - hr) / n)
    return {"events": n, f"hr_at_{k}": round(hr, 4), f"ndcg_at_{k}": round(sum(s.ndcg for s in part) / n, 4),
            "hr_ci95": [round(max(0.0, hr - half), 4), round(min(1.0, hr + half), 4)]}
