"""Turning scores into a slate, position by position, with the exact probability of each pick.

Every explorer fills the slate top-down. At each position it draws one of the items not yet
placed; ``propensities[j]`` is the probability that it drew that item at position j, given the
items above it. The product over positions is the probability of the whole slate, which is what
off-policy evaluation needs, and what the tests check against sampled frequencies.

An optional diversity term (maximal marginal relevance) lowers an item's score by its greatest
similarity to the items already placed, before the draw at each position, so propensities stay
exact with it too. In the same way, with a ``choice`` model (SlateQ: ``learner.slateq``) the scores
are values given a click, and at each position an item counts with what the slate would be
worth with it added, under the click model: bait that draws clicks away from better items
gains nothing.

Scores are one request's, shape (n,), or a micro-batch's, shape (B, n): a batch fills all its
slates at once, one array operation per position rather than one per request and position
(the agent's hot path). Results have the scores' leading shape: (k,) or (B, k).

An optional ``allowed`` mask of the scores' shape leaves items out (the request's ``exclude``,
what the user already bought): they start closed, as if placed above the first position, so
every draw is over the allowed items only and the propensities are those of the allowed
candidates alone. Masking rather than a shorter candidate list lets one list object (the
catalog, whose item vectors the DQN policy caches) serve every request.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> order, p = greedy(np.array([0.1, 3.0, 2.0]), 2)
>>> order.tolist(), p.tolist()
([1, 2], [1.0, 1.0])
>>> order, p = epsilon_greedy(np.array([0.1, 3.0, 2.0]), 2, epsilon=0.3, rng=rng)
>>> order.tolist(), [round(float(x), 3) for x in p]   # item 0 came from the uniform draw
([1, 0], [0.8, 0.15])
>>> order, p = greedy(np.array([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]]), 2)   # a batch of two
>>> order.tolist()
[[1, 2], [0, 2]]
>>> order, p = uniform(np.zeros(3), 2, rng=rng, allowed=np.array([True, False, True]))
>>> sorted(order.tolist()), p.tolist()   # item 1 is left out: draws among two, then one
([0, 2], [0.5, 1.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from shelfq.learner.slateq import ChoiceModel

#: similarity(chosen item index, candidate indices) -> similarities in [0, 1]
Similarity = Callable[[int, np.ndarray], np.ndarray]

#: draw(adjusted scores (B, n) with placed and excluded items at -inf, open mask (B, n), the best
#: open index per row (B,), open items per row: an int, or (B,) with an ``allowed`` mask)
#: -> each row's pick (B,) and how likely that pick was (B,)
Draw = Callable[[np.ndarray, np.ndarray, np.ndarray, "int | np.ndarray"], tuple[np.ndarray, np.ndarray]]


def _fill(scores: np.ndarray, k: int, draw: Draw, diversity: float,
          similarity: Similarity | Sequence[Similarity] | None,
          choice: ChoiceModel | None = None, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill k positions of every row; placed and excluded items are masked out (-inf), not
    removed."""
    single = scores.ndim == 1
    scores = np.atleast_2d(scores).astype(np.float64)
    rows, n = scores.shape
    if not 1 <= k <= n:
        raise ValueError(f"slate of {k} from {n} candidates")
    excluded: np.ndarray | None = None
    if allowed is not None:
        open_ = np.array(np.broadcast_to(allowed, scores.shape), dtype=bool)  # a copy: placed items close in it
        open_count = open_.sum(axis=1)
        if open_count.min() < k:
            raise ValueError(f"slate of {k} from {int(open_count.min())} allowed candidates")
        excluded = ~open_
    else:
        open_ = np.ones((rows, n), dtype=bool)
    sims: Sequence[Similarity] | None = None
    if diversity > 0 and similarity is not None:
        sims = [similarity] if callable(similarity) else similarity
        if len(sims) != rows:
            raise ValueError(f"{len(sims)} similarity functions for {rows} score rows")
    every_row, everyone = np.arange(rows), np.arange(n)
    penalty = np.zeros((rows, n)) if sims is not None else None
    # The slate so far under the click model: the no-click value + the sum of v * score, 1 + the sum of v.
    if choice is not None:
        attraction = np.atleast_2d(choice.attraction)
        choice = choice._replace(attraction=attraction)
        num = np.broadcast_to(np.asarray(choice.no_click_value, dtype=np.float64), (rows,)).copy()
        den = np.ones(rows)
        odds = choice.odds_at(0)
        v = choice.at(0)
        vq = v * scores  # assortment_gains' product, once for every position with these odds

    chosen = np.empty((rows, k), dtype=np.int64)
    probs = np.empty((rows, k))

    def adjust(j: int) -> np.ndarray:
        """Each item's score if it were placed at position j; the items above at -inf."""
        # assortment_gains(scores, v, num, den), its v * scores computed once per odds.
        gains = scores.copy() if choice is None else (num[:, None] + vq) / (den[:, None] + v)
        if penalty is not None:
            gains -= diversity * penalty
        gains[every_row[:, None], chosen[:, :j]] = -np.inf
        if excluded is not None:
            gains[excluded] = -np.inf
        return gains

    adjusted = adjust(0)
    for j in range(k):
        best = _best_open(adjusted, open_)
        at, p = draw(adjusted, open_, best, n - j if excluded is None else open_count - j)
        chosen[:, j], probs[:, j] = at, p
        open_[every_row, at] = False
        if choice is not None:  # the click model: the next position has its own odds
            placed = v[every_row, at]
            num, den = num + placed * scores[every_row, at], den + placed
            if choice.odds_at(j + 1) != odds:  # untrained or position-free models: one odds for all
                odds = choice.odds_at(j + 1)
                v = choice.at(j + 1)
                vq = v * scores
        if penalty is not None:  # MMR: the most similar placed item sets the penalty
            for b in range(rows):
                penalty[b] = np.maximum(penalty[b], sims[b](int(at[b]), everyone))  # type: ignore[index]
        if choice is None and penalty is None:
            adjusted[every_row, at] = -np.inf  # the scores stay; only the placed items drop out
        else:
            adjusted = adjust(j + 1)
    return (chosen[0], probs[0]) if single else (chosen, probs)


def _best_open(adjusted: np.ndarray, open_: np.ndarray) -> np.ndarray:
    """Each row's best open item, ties to the lower index. Placed items are at -inf, so a row
    whose open items are all -inf too takes its first open one.

    >>> _best_open(np.array([[0.0, -np.inf, -np.inf]]), np.array([[False, True, True]])).tolist()
    [1]
    """
    best = np.argmax(adjusted, axis=1)
    every_row = np.arange(len(best))
    closed = np.flatnonzero(~open_[every_row, best])
    if len(closed):
        best[closed] = np.argmax(open_[closed], axis=1)
    return best


def _uniform_open(open_: np.ndarray, rng: np.random.Generator, remaining: int | np.ndarray) -> np.ndarray:
    """One uniform draw among each row's ``remaining`` open items (one count for all rows, or
    one per row).

    While at least half the items of every row are open (the agent's slates are far shorter
    than its candidate lists), a draw among all items is redrawn where it hit a closed one:
    rejection sampling, exact, and it rarely needs a second draw. Otherwise the draw picks the
    r-th open item, which counts them."""
    rows, n = open_.shape
    if 2 * np.min(remaining) < n:
        nth = rng.integers(remaining, size=rows)
        return np.argmax(np.cumsum(open_, axis=1) > nth[:, None], axis=1)
    at = np.asarray(rng.integers(n, size=rows))
    missed = np.flatnonzero(~open_[np.arange(rows), at])
    while len(missed):
        at[missed] = rng.integers(n, size=len(missed))
        missed = missed[~open_[missed, at[missed]]]
    return at


def greedy(scores: np.ndarray, k: int, *, diversity: float = 0.0,
           similarity: Similarity | Sequence[Similarity] | None = None,
           choice: ChoiceModel | None = None, rng: np.random.Generator | None = None,
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best remaining item at every position (ties to the lower index); propensity 1."""
    return _fill(scores, k, lambda _s, _o, best, _n: (best, np.ones(len(best))), diversity, similarity, choice,
                 allowed)


def epsilon_greedy(scores: np.ndarray, k: int, *, epsilon: float, rng: np.random.Generator,
                   diversity: float = 0.0, similarity: Similarity | Sequence[Similarity] | None = None,
                   choice: ChoiceModel | None = None, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """At each position: the best remaining item with probability 1 - epsilon, else a uniform
    draw among the remaining ones (which may be the best one too)."""
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")

    def draw(_s: np.ndarray, open_: np.ndarray, best: np.ndarray,
             remaining: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = best.copy()
        explore = (rng.random(len(best)) < epsilon).nonzero()[0]
        if len(explore):
            at[explore] = _uniform_open(open_[explore], rng,
                                        remaining[explore] if isinstance(remaining, np.ndarray) else remaining)
        return at, epsilon_probs(at, best, epsilon, remaining)

    return _fill(scores, k, draw, diversity, similarity, choice, allowed)


def epsilon_probs(at: np.ndarray, best: np.ndarray, epsilon: float, remaining: int | np.ndarray) -> np.ndarray:
    """How likely epsilon-greedy draws item ``at``, given each row's ``best`` open item and how
    many are open: the best with 1 - epsilon, and each open one (the best too) with epsilon
    over their number. For open items only.

    >>> epsilon_probs(np.array([2, 0]), np.array([2, 2]), 0.3, 2).tolist()
    [0.85, 0.15]
    """
    return (1 - epsilon) * (at == best) + epsilon / remaining


def boltzmann(scores: np.ndarray, k: int, *, temperature: float, rng: np.random.Generator,
              diversity: float = 0.0, similarity: Similarity | Sequence[Similarity] | None = None,
              choice: ChoiceModel | None = None, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plackett-Luce: at each position, a draw from softmax(score / temperature) over the
    remaining items (sampling without replacement). Open items that are all -inf are drawn
    uniformly.

    >>> rng = np.random.default_rng(1)
    >>> order, p = boltzmann(np.array([0.0, 0.0]), 2, temperature=1.0, rng=rng)
    >>> p.tolist()
    [0.5, 1.0]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def draw(s: np.ndarray, open_: np.ndarray, best: np.ndarray, _n: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        every_row = np.arange(len(best))
        w = boltzmann_probs(s, open_, best, temperature)
        # The first index whose cumulative weight exceeds the draw (searchsorted, row-wise).
        at = np.minimum((np.cumsum(w, axis=1) <= rng.random(len(best))[:, None]).sum(axis=1), s.shape[1] - 1)
        for b in np.flatnonzero(~open_[every_row, at]):  # float round-off at the top end
            while not open_[b, at[b]]:
                at[b] -= 1
        return at, w[every_row, at]

    return _fill(scores, k, draw, diversity, similarity, choice, allowed)


def boltzmann_probs(adjusted: np.ndarray, open_: np.ndarray, best: np.ndarray, temperature: float) -> np.ndarray:
    """Each row's softmax(score / temperature) over its open items (B, n), with closed items at
    -inf in ``adjusted`` and ``best`` each row's best open item; a row whose open items are all
    -inf (or +inf) is uniform over them.

    >>> boltzmann_probs(np.array([[0.0, -np.inf, 0.0]]), np.array([[True, False, True]]), np.array([0]), 1.0).tolist()
    [[0.5, 0.0, 0.5]]
    """
    top = adjusted[np.arange(len(best)), best]
    with np.errstate(invalid="ignore"):
        w = np.exp((adjusted - top[:, None]) / temperature)  # placed items: exp(-inf) = 0
    flat = ~np.isfinite(top)  # the open items are all -inf (or +inf): alike, so uniform among them
    w[flat] = open_[flat]
    w /= w.sum(axis=1, keepdims=True)
    return w


def next_pick_probs(scores: np.ndarray, open_: np.ndarray, kind: str, *, epsilon: float = 0.0,
                    temperature: float = 1.0) -> np.ndarray:
    """The distribution of an explorer's next pick over all items of one row of scores (n,),
    given which are still ``open``, as ``greedy``, ``epsilon_greedy`` and ``boltzmann`` draw it
    (same best item, ties to the lower index, same weights): what off-policy evaluation asks a
    target policy. ``kind`` is greedy, epsilon or boltzmann; without diversity or a choice model
    (pass the scores they would adjust to).

    >>> next_pick_probs(np.array([0.1, 3.0, 2.0]), np.array([True, False, True]), "epsilon", epsilon=0.3).tolist()
    [0.15, 0.0, 0.85]
    """
    if kind not in ("greedy", "epsilon", "boltzmann"):
        raise ValueError(f"exploration must be greedy, epsilon or boltzmann, not {kind!r}")
    remaining = int(open_.sum())
    if remaining == 0:
        return np.zeros(len(scores))
    adjusted = np.where(open_, scores.astype(np.float64), -np.inf)[None]
    best = _best_open(adjusted, open_[None])
    if kind == "boltzmann":
        return boltzmann_probs(adjusted, open_[None], best, temperature)[0]
    probs = epsilon_probs(np.arange(len(scores)), best, epsilon if kind == "epsilon" else 0.0, remaining)
    return np.where(open_, probs, 0.0)


def uniform(scores: np.ndarray, k: int, *, rng: np.random.Generator,
            allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random ordered slate (the random policy)."""
    def draw(_s: np.ndarray, open_: np.ndarray, best: np.ndarray,
             remaining: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _uniform_open(open_, rng, remaining), np.ones(len(best)) / remaining

    return _fill(scores, k, draw, 0.0, None, allowed=allowed)
