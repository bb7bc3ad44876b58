"""What shoppers click next: for each item row, the rows most often clicked right after it.

A shop's sequences (a series, a course, the next size up, the cable for the phone) say more
about what a shopper wants next than either the item or the shopper alone: a first-order
Markov chain on the clicks is a strong recommender wherever they exist. The encoder could
learn them from item embeddings, but only after many gradient steps per item pair; counting
them is immediate. The learner counts, for every clicked transition, the pair (the newest item
of the state's history, the clicked item), and the network reads the counts as two cross
features of each candidate (``learner.affinity``): its share of what followed the newest
item, and how often it did. Where shoppers' clicks have no order the weights of those
features stay near zero.

The table is bounded: ``width`` slots per item row, kept by the Space-Saving rule (a pair
without a slot takes the least-counted one and starts above its count), so frequent
successors are kept and the counts overestimate rare ones by at most the row's minimum. The
table is part of the network's weights (``QNetwork.next_click_rows``, ``next_click_counts``): it travels
with every model and every checkpoint, and an agent computes the same features the learner
trained on.

>>> t = NextClicks(rows=10, width=2)
>>> t.observe(np.array([1, 1, 1, 1]), np.array([2, 2, 3, 4])).tolist()  # row 1 changed
[1]
>>> t.successors[1].tolist(), t.counts[1].tolist()   # 4 took 3's slot, and counts from 3's 1
([2, 4], [2.0, 2.0])
>>> t.observe(np.array([0, 5]), np.array([7, 0])).tolist()  # padding on either side: nothing
[]
"""

from __future__ import annotations

import numpy as np


class NextClicks:
    """The bounded (item row -> next clicked item rows, counts) table, in numpy."""

    def __init__(self, rows: int, width: int) -> None:
        if rows < 2 or width < 1:
            raise ValueError(f"NextClicks: rows must be >= 2 and width >= 1, got {rows} and {width}")
        self.successors = np.zeros((rows, width), dtype=np.int32)  # 0 = an empty slot
        self.counts = np.zeros((rows, width), dtype=np.float32)

    def observe(self, previous: np.ndarray, clicked: np.ndarray) -> np.ndarray:
        """Count each pair (``previous[i]`` -> ``clicked[i]``) of item rows; pairs with padding
        (row 0) on either side are left out. Returns the rows that changed, sorted."""
        keep = (previous != 0) & (clicked != 0)
        changed: set[int] = set()
        successors, counts = self.successors, self.counts
        for row, item in zip(previous[keep].tolist(), clicked[keep].tolist()):
            slots = successors[row]
            hit = np.flatnonzero(slots == item)
            if hit.size:
                counts[row, hit[0]] += 1.0
            else:  # Space-Saving: the least-counted slot (an empty one first) goes to the new pair
                slot = int(np.argmin(counts[row]))
                successors[row, slot] = item
                counts[row, slot] += 1.0
            changed.add(row)
        return np.array(sorted(changed), dtype=np.int64)

    def load(self, successors: np.ndarray, counts: np.ndarray) -> None:
        """Take over a table read from a checkpoint (the network's buffers)."""
        if successors.shape != self.successors.shape or counts.shape != self.counts.shape:
            raise ValueError(f"NextClicks.load: shapes {successors.shape} and {counts.shape}, "
                             f"want {self.successors.shape}")
        self.successors[...] = successors
        self.counts[...] = counts
