"""Turning scores into a slate, position by position, with the exact probability of each pick.

Every explorer fills the slate top-down. At each position it draws one of the items not yet
placed; ``propensities[j]`` is the probability that it drew that item at position j, given the
items above it. The product over positions is the probability of the whole slate, which is what
off-policy evaluation needs, and what the tests check against sampled frequencies.

An optional diversity term (maximal marginal relevance) lowers an item's score by its greatest
similarity to the items already placed, before the draw at each position, so propensities stay
exact with it too.

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

#: similarity(chosen item index, candidate indices) -> similarities in [0, 1]
Similarity = Callable[[int, np.ndarray], np.ndarray]


def _adjusted(scores: np.ndarray, remaining: np.ndarray, chosen: list[int], diversity: float,
              similarity: Similarity | None, penalty: np.ndarray) -> np.ndarray:
    """Scores of the remaining items, less the diversity penalty of what is placed so far."""
    if diversity <= 0 or similarity is None or not chosen:
        return scores[remaining]
    penalty[remaining] = np.maximum(penalty[remaining], similarity(chosen[-1], remaining))
    return scores[remaining] - diversity * penalty[remaining]


def _fill(scores: np.ndarray, k: int, draw: Callable[[np.ndarray], tuple[int, float]], diversity: float,
          similarity: Similarity | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"slate of {k} from {n} candidates")
    remaining = np.arange(n)
    penalty = np.zeros(n)
    chosen: list[int] = []
    probs: list[float] = []
    for _ in range(k):
        at, p = draw(_adjusted(scores, remaining, chosen, diversity, similarity, penalty))
        chosen.append(int(remaining[at]))
        probs.append(p)
        remaining = np.delete(remaining, at)
    return np.array(chosen), np.array(probs)


def greedy(scores: np.ndarray, k: int, *, diversity: float = 0.0, similarity: Similarity | None = None,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best remaining item at every position (ties to the lower index); propensity 1."""
    return _fill(scores, k, lambda s: (int(np.argmax(s)), 1.0), diversity, similarity)


def epsilon_greedy(scores: np.ndarray, k: int, *, epsilon: float, rng: np.random.Generator,
                   diversity: float = 0.0, similarity: Similarity | None = None) -> tuple[np.ndarray, np.ndarray]:
    """At each position: the best remaining item with probability 1 - epsilon, else a uniform
    draw among the remaining ones (which may be the best one too)."""
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")

    def draw(s: np.ndarray) -> tuple[int, float]:
        best = int(np.argmax(s))
        at = best if rng.random() >= epsilon else int(rng.integers(len(s)))
        return at, (1 - epsilon) * (at == best) + epsilon / len(s)

    return _fill(scores, k, draw, diversity, similarity)


def boltzmann(scores: np.ndarray, k: int, *, temperature: float, rng: np.random.Generator,
              diversity: float = 0.0, similarity: Similarity | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plackett-Luce: at each position, a draw from softmax(score / temperature) over the
    remaining items (sampling without replacement).

    >>> rng = np.random.default_rng(1)
    >>> order, p = boltzmann(np.array([0.0, 0.0]), 2, temperature=1.0, rng=rng)
    >>> p.tolist()
    [0.5, 1.0]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    def draw(s: np.ndarray) -> tuple[int, float]:
        z = (s - s.max()) / temperature
        w = np.exp(z)
        w /= w.sum()
        at = int(min(np.searchsorted(np.cumsum(w), rng.random() * 1.0, side="right"), len(w) - 1))
        return at, float(w[at])

    return _fill(scores, k, draw, diversity, similarity)


def uniform(scores: np.ndarray, k: int, *, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uniformly random ordered slate (the random policy)."""
    return _fill(scores, k, lambda s: (int(rng.integers(len(s))), 1.0 / len(s)), 0.0, None)
