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

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> order, p = greedy(np.array([0.1, 3.0, 2.0]), 2)
>>> order.tolist(), p.tolist()
([1, 2], [1.0, 1.0])
>>> order, p = epsilon_greedy(np.array([0.1, 3.0, 2.0]), 2, epsilon=0.3, rng=rng)
>>> order.tolist(), [round(float(x), 3) for x in p]   # item 0 came from the uniform draw
([1, 0], [0.8, 0.15])
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from learner.slateq import ChoiceModel, assortment_gains

#: similarity(chosen item index, candidate indices) -> similarities in [0, 1]
Similarity = Callable[[int, np.ndarray], np.ndarray]


Draw = Callable[[np.ndarray, np.ndarray, Callable[[], int], int], tuple[int, float]]


def _fill(scores: np.ndarray, k: int, draw: Draw, diversity: float,
          similarity: Similarity | None, choice: ChoiceModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill k positions; ``draw(adjusted scores, open mask, best, remaining)`` picks an open
    index and says how likely that pick was (``best()`` gives the best open one). Placed items
    are masked out rather than removed, so nothing is copied per position."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"slate of {k} from {n} candidates")
    open_ = np.ones(n, dtype=bool)
    penalty = np.zeros(n) if diversity > 0 and similarity is not None else None
    scores = scores.astype(np.float64)
    # The slate so far under the click model: the no-click value + the sum of v * score, 1 + the sum of v.
    num, den = (0.0 if choice is None else choice.no_click_value), 1.0
    v = None if choice is None else choice.at(0)

    def adjust() -> np.ndarray:
        """Each item's score if it were placed next."""
        gains = scores if v is None else assortment_gains(scores, v, num, den)
        return gains if penalty is None else gains - diversity * penalty

    adjusted = adjust()
    chosen = np.empty(k, dtype=np.int64)
    probs = np.empty(k)
    everyone = np.arange(n)
    if penalty is None and choice is None:
        # Scores stay fixed: the best open item is the first open one of the top k + 1.
        top = np.argpartition(-adjusted, k)[: k + 1] if k < n else everyone
        top = top[np.lexsort((top, -adjusted[top]))]  # by score, ties to the lower index

        def best() -> int:
            return int(next(i for i in top if open_[i]))
    else:
        def best() -> int:
            return _best(adjusted, open_)
    for j in range(k):
        at, p = draw(adjusted, open_, best, n - j)
        chosen[j], probs[j] = at, p
        open_[at] = False
        if v is not None:  # the click model: the next position has its own odds
            num, den = num + v[at] * scores[at], den + v[at]
            v = choice.at(j + 1)
        if penalty is not None:  # MMR: the most similar placed item sets the penalty
            penalty = np.maximum(penalty, similarity(at, everyone))
        if penalty is not None or v is not None:
            adjusted = adjust()
    return chosen, probs


def _best(adjusted: np.ndarray, open_: np.ndarray) -> int:
    return int(np.argmax(np.where(open_, adjusted, -np.inf)))


def greedy(scores: np.ndarray, k: int, *, diversity: float = 0.0, similarity: Similarity | None = None,
           choice: ChoiceModel | None = None, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best remaining item at every position (ties to the lower index); propensity 1."""
    return _fill(scores, k, lambda _s, _o, best, _n: (best(), 1.0), diversity, similarity, choice)


def epsilon_greedy(scores: np.ndarray, k: int, *, epsilon: float, rng: np.random.Generator,
                   diversity: float = 0.0, similarity: Similarity | None = None,
                   choice: ChoiceModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """At each position: the best remaining item with probability 1 - epsilon, else a uniform
    draw among the remaining ones (which may be the best one too)."""
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")

    def draw(_s: np.ndarray, open_: np.ndarray, best: Callable[[], int], remaining: int) -> tuple[int, float]:
        top = best()
        if rng.random() >= epsilon:
            return top, (1 - epsilon) + epsilon / remaining
        at = int(np.flatnonzero(open_)[rng.integers(remaining)])
        return at, (1 - epsilon) * (at == top) + epsilon / remaining

    return _fill(scores, k, draw, diversity, similarity, choice)


def boltzmann(scores: np.ndarray, k: int, *, temperature: float, rng: np.random.Generator,
              diversity: float = 0.0, similarity: Similarity | None = None,
              choice: ChoiceModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plackett-Luce: at each position, a draw from softmax(score / temperature) over the
    remaining items (sampling without replacement).

    >>> rng = np.random.default_rng(1)
    >>> order, p = boltzmann(np.array([0.0, 0.0]), 2, temperature=1.0, rng=rng)
    >>> p.tolist()
    [0.5, 1.0]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def draw(s: np.ndarray, open_: np.ndarray, _best: Callable[[], int], _n: int) -> tuple[int, float]:
        z = np.where(open_, s, -np.inf)
        w = np.exp((z - z.max()) / temperature)
        w /= w.sum()
        at = int(np.searchsorted(np.cumsum(w), rng.random(), side="right"))
        at = min(at, len(w) - 1)
        while not open_[at]:  # float round-off at the top end: step back to an open item
            at -= 1
        return at, float(w[at])

    return _fill(scores, k, draw, diversity, similarity, choice)


def uniform(scores: np.ndarray, k: int, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random ordered slate (the random policy)."""
    def draw(_s: np.ndarray, open_: np.ndarray, _best: Callable[[], int], remaining: int) -> tuple[int, float]:
        return int(np.flatnonzero(open_)[rng.integers(remaining)]), 1.0 / remaining

    return _fill(scores, k, draw, 0.0, None)
