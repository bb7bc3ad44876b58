"""A bounded replay buffer of featurized transitions, sampled uniformly or by priority.

Preallocated numpy arrays: memory is fixed by ``capacity`` and known up front, appends and
samples are vectorised, and the whole buffer saves to safetensors as it is (checkpoints).

>>> from shelfq.learner.features import Featurizer
>>> from shelfq.learner.synthetic import bait_or_build
>>> buf = ReplayBuffer(capacity=4, history_length=2, seed=0)
>>> buf.add(Featurizer(1000, 2).rows(bait_or_build(6, seed=0)))
>>> len(buf), buf.added                                   # bounded: the oldest were overwritten
(4, 6)
>>> sorted(set(buf.sample(50).indices.tolist()))          # only filled slots are drawn
[0, 1, 2, 3]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shelfq.learner.columns import COLUMNS, ROW_FIELDS, SUCCESSORS, Rows, take
from shelfq.learner.features import MAX_CONTEXT

_PRIORITY_EPS = 1e-3
CLICK_COLUMNS = ("clicks", "quiet", "slates")  # what SlateQ reads, added after the first checkpoints
LINK_COLUMN = SUCCESSORS.name  # added later still: checkpoints without it restore with no links
CHOSEN_COLUMN = "chosen"  # and later again: checkpoints without it restore every row as chosen


@dataclass(frozen=True, slots=True)
class Sample(Rows[np.ndarray]):
    """A sampled batch as numpy arrays (the ``Rows`` columns); ``indices`` and ``weights`` serve
    prioritized replay."""

    indices: np.ndarray
    weights: np.ndarray
    uniform: int
    """The first ``uniform`` rows were drawn from all transitions, the rest from clicked ones."""


class ReplayBuffer:
    """Ring buffer of ``capacity`` transitions with optional proportional prioritization."""

    def __init__(self, capacity: int, history_length: int, *, slate_width: int = 10, prioritized: bool = False,
                 alpha: float = 0.6, beta: float = 0.4, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.prioritized, self.alpha, self.beta = capacity, prioritized, alpha, beta
        widths = {"history": history_length, "context": MAX_CONTEXT, "slate": slate_width}
        # The ``Rows`` columns, each row's priority, and the link n-step targets follow.
        self.arrays: dict[str, np.ndarray] = {name: c.empty(capacity, widths) for name, c in COLUMNS.items()}
        self.arrays["cursor"] = np.zeros(2, np.int64)  # [next slot, transitions ever added]
        self._rng = np.random.default_rng(seed)
        self._max_priority = 1.0

    @property
    def added(self) -> int:
        return int(self.arrays["cursor"][1])

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, rows: dict[str, np.ndarray]) -> None:
        """Append featurized transitions (``Featurizer.rows``: arrays with a batch axis)."""
        n = len(rows["actions"])
        if n == 0:
            return
        a = self.arrays
        idx = (int(a["cursor"][0]) + np.arange(n)) % self.capacity
        for name in ROW_FIELDS:
            a[name][idx] = rows[name]
        a["priorities"][idx] = self._max_priority
        a[LINK_COLUMN][idx] = -1
        a["cursor"][0] = (int(a["cursor"][0]) + n) % self.capacity
        a["cursor"][1] += n

    def sample(self, batch_size: int, clicked_share: float = 0.0) -> Sample:
        """``batch_size`` transitions; with ``clicked_share`` > 0, that share of them (the end of
        the batch) is drawn from the clicked transitions only, the rest from all.

        Clicks are rare (a few per hundred shown items), and SlateQ learns the value of a click
        from clicked transitions alone: a uniform batch would hold a handful."""
        n = len(self)
        if n == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if clicked_share > 0:
            if self.prioritized:
                raise ValueError("clicked_share does not combine with prioritized replay")
            clicked = np.flatnonzero(self.arrays["clicks"][:n])
            k = int(round(batch_size * clicked_share)) if len(clicked) else 0
            idx = np.concatenate([self._rng.integers(0, n, batch_size - k),
                                  clicked[self._rng.integers(0, max(1, len(clicked)), k)]])
            weights = np.ones(batch_size, np.float32)
            uniform = batch_size - k
        elif self.prioritized:
            p = self.arrays["priorities"][:n] ** self.alpha
            cdf = np.cumsum(p)
            idx = np.minimum(np.searchsorted(cdf, self._rng.random(batch_size) * cdf[-1]), n - 1)
            probs = p[idx] / cdf[-1]
            w = (n * probs) ** -self.beta
            weights = (w / w.max()).astype(np.float32)
            uniform = batch_size
        else:
            idx = self._rng.integers(0, n, batch_size)
            weights = np.ones(batch_size, np.float32)
            uniform = batch_size
        return Sample(**take(self.arrays, idx), indices=idx, weights=weights, uniform=uniform)

    def link(self, numbers: np.ndarray, successor: int) -> None:
        """Point the rows of these numbers (of rows ever added) at row ``successor``; rows the
        ring has overwritten since are left alone."""
        live = numbers[numbers >= self.added - self.capacity]
        self.arrays[LINK_COLUMN][live % self.capacity] = successor

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Priorities follow the latest |TD error| of each sampled transition."""
        if not self.prioritized:
            return
        p = np.abs(td_errors).astype(np.float64) + _PRIORITY_EPS
        self.arrays["priorities"][indices] = p
        self._max_priority = max(self._max_priority, float(p.max()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """The arrays to checkpoint (only the filled part matters, but shapes stay fixed)."""
        return self.arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray], clicks_required: bool = True) -> None:
        """Restore a checkpoint's arrays. Checkpoints from before SlateQ lack the click columns
        (``clicks``, ``quiet``, ``slates``): an item-wise learner (``clicks_required=False``)
        restores them as zeros, which it never reads; SlateQ cannot learn from such rows."""
        missing = [name for name in CLICK_COLUMNS if name not in arrays]
        no_links = LINK_COLUMN not in arrays
        if missing and clicks_required:
            raise ValueError(f"replay checkpoint has no {', '.join(missing)} columns (written before SlateQ); "
                             "restore it with objective=item or start from another checkpoint_dir")
        for name, current in self.arrays.items():
            if name in missing:
                current[...] = 0
                continue
            if name == LINK_COLUMN and no_links:
                current[...] = -1
                continue
            if name == CHOSEN_COLUMN and name not in arrays:
                current[...] = True
                continue
            loaded = arrays.get(name)
            if loaded is None or loaded.shape != current.shape or loaded.dtype != current.dtype:
                raise ValueError(f"replay checkpoint does not match this buffer at {name!r} "
                                 f"(capacity, history_length or slate_size changed?)")
            current[...] = loaded
        filled = self.arrays["priorities"][: len(self)]
        self._max_priority = float(filled.max()) if len(filled) else 1.0
