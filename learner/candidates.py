"""The items the learner knows and how popular they are: the candidate set for the max over
next actions (popular items plus a uniform sample of the catalog), bounded in size.

>>> c = Catalog(seed=0, capacity=100)
>>> c.observe(["a", "b", "c"], "a", reward=1.0)
>>> c.observe(["a", "d"], "a", reward=2.0)
>>> c.popular(1)
['a']
>>> sorted(c.candidates(4, popular_share=0.25))
['a', 'b', 'c', 'd']
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class Catalog:
    """Item ids seen on ``items`` and in slates, with decayed reward-weighted popularity."""

    def __init__(self, seed: int = 0, capacity: int = 100_000, decay: float = 0.999) -> None:
        self.capacity, self.decay = capacity, decay
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._score = np.zeros(0, np.float64)
        self._scale = 1.0  # popularity decays by growing the weight of new evidence instead
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item_id: str) -> None:
        if item_id in self._index:
            return
        if len(self._ids) >= self.capacity:
            # Full: replace the least popular item (catalogs churn; memory stays bounded).
            slot = int(np.argmin(self._score[: len(self._ids)]))
            del self._index[self._ids[slot]]
            self._ids[slot], self._score[slot] = item_id, 0.0
            self._index[item_id] = slot
            return
        self._index[item_id] = len(self._ids)
        self._ids.append(item_id)
        if len(self._ids) > len(self._score):
            self._score = np.concatenate([self._score, np.zeros(max(64, len(self._score)))])

    def remove(self, item_id: str) -> None:
        """An item left the catalog (tombstone on ``items``)."""
        slot = self._index.pop(item_id, None)
        if slot is None:
            return
        last = len(self._ids) - 1
        if slot != last:
            self._ids[slot], self._score[slot] = self._ids[last], self._score[last]
            self._index[self._ids[slot]] = slot
        self._ids.pop()
        self._score[last] = 0.0

    def observe(self, shown: Iterable[str], action: str, reward: float) -> None:
        """A transition: every shown item is known; the action gains popularity (1 + reward)."""
        index = self._index
        for item in shown:
            if item not in index and item != action:
                self.add(item)
        self.add(action)  # last, so that a full catalog never evicts it before it is counted
        self._scale /= self.decay
        if self._scale > 1e100:  # renormalise before the floats overflow
            self._score /= self._scale
            self._scale = 1.0
        self._score[self._index[action]] += self._scale * (1.0 + max(reward, 0.0))

    def state(self) -> tuple[list[str], np.ndarray]:
        """Ids and popularity (for checkpoints)."""
        return list(self._ids), self._score[: len(self._ids)] / self._scale

    def load(self, ids: list[str], scores: np.ndarray) -> None:
        self._ids, self._index = list(ids), {item: i for i, item in enumerate(ids)}
        self._score = np.zeros(max(64, 2 * len(ids)), np.float64)
        self._score[: len(ids)] = scores
        self._scale = 1.0

    def popular(self, n: int) -> list[str]:
        n = min(n, len(self._ids))
        if n == 0:
            return []
        top = np.argpartition(-self._score[: len(self._ids)], n - 1)[:n]
        top = top[np.argsort(-self._score[top], kind="stable")]
        return [self._ids[i] for i in top]

    def candidates(self, k: int, popular_share: float = 0.5) -> list[str]:
        """``k`` distinct items: the most popular ``k * popular_share``, then a uniform sample."""
        if not self._ids:
            raise ValueError("the catalog is empty: no candidates for the max over next actions")
        chosen = self.popular(int(k * popular_share))
        taken = set(chosen)
        draw = self._rng.choice(len(self._ids), size=min(len(self._ids), k + len(chosen)), replace=False)
        rest = [i for i in draw if self._ids[i] not in taken]
        chosen += [self._ids[i] for i in rest[: k - len(chosen)]]
        return chosen
