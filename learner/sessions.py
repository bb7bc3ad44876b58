"""n-step returns along a session: each replay row is linked to the next slate of its session,
and a sampled row's target walks those links.

A transition's one-step target ``r + gamma * (1 - done) * V(s')`` sees what the click did to the
session only through ``done``. In the simulator (and in a shop) a disappointing click also lowers
the chance that the shopper stays for the slates after the next one; a target that takes the
next logged slates' rewards and exits before it bootstraps sees that too::

    y = r_t + gamma (1 - d_t) [R_t+1 + gamma (1 - D_t+1) [ ... V(s_t+n) ]]

where ``R`` and ``D`` are what the session's next slate got (its reward, whether the shopper
left) and ``s_t+n`` is the state after the last slate followed. The returns are uncorrected for
the logging policy, as in Ape-X and Rainbow: the slates in between are what was served, not the
greedy ones, which is why n stays small (``LearnerConfig.n_step``).

Links come from the transitions themselves: rows of one session, in the order of their
impressions. A slate's representative row, which the previous slate's rows point to, is its row
with the most reward (the clicked item, if any), since at most one item of a slate is clicked and
every row of a slate shares its next state. Rows arrive from the join in any grouping, so a
late row with more reward moves the link. A link leads to a newer row, which the ring buffer
overwrites after the row itself, so a live row's links are live; a row without a link (its
session's last slate so far, or one the learner saw before a restart) keeps the one-step target.

>>> links = SessionLinks(capacity=10)
>>> # session a: slate q1 (rows 0, 1), then slate q2 (rows 2, 3; row 3 clicked)
>>> links.add(np.arange(4), np.array([7, 7, 7, 7]), np.array([1, 1, 2, 2]),
...           np.array([1.0, 1.0, 2.0, 2.0]), np.array([0.0, 0.0, 0.0, 1.0]))
[(array([0, 1]), 2), (array([0, 1]), 3)]
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from shelfq.learner.columns import LINK_FIELDS, SUCCESSORS

__all__ = ["LINK_FIELDS", "Bootstrap", "SessionLinks", "bootstrap"]


@dataclass
class _Session:
    request: int
    ts: float
    rep: int  # the current slate's representative row
    rep_reward: float
    rows: list[int] = field(default_factory=list)  # the current slate's rows
    previous: list[int] = field(default_factory=list)  # the rows of the slate before it


class SessionLinks:
    """The last slate of each of the ``capacity`` most recently seen sessions (older ones are
    forgotten: their next slate, should one come, is not linked)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._sessions: OrderedDict[int, _Session] = OrderedDict()

    def add(self, numbers: np.ndarray, sessions: np.ndarray, requests: np.ndarray, ts: np.ndarray,
            rewards: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Take new rows (their numbers, session and request keys, impression times, rewards);
        returns the links to set: (rows, the row they now lead to)."""
        links: list[tuple[np.ndarray, int]] = []
        known = self._sessions
        for n, s, q, t, r in zip(numbers.tolist(), sessions.tolist(), requests.tolist(), ts.tolist(), rewards.tolist()):
            st = known.get(s)
            if st is None:
                known[s] = _Session(q, t, n, r, [n])
                if len(known) > self.capacity:
                    known.popitem(last=False)
                continue
            known.move_to_end(s)
            if q == st.request:
                st.rows.append(n)
                if r > st.rep_reward:
                    st.rep, st.rep_reward = n, r
                    if st.previous:
                        links.append((np.array(st.previous), n))
            elif t >= st.ts:  # the session's next slate
                links.append((np.array(st.rows), n))
                known[s] = _Session(q, t, n, r, [n], st.rows)
            # else: a row of an older slate, late: it keeps no link (one-step target)
        return links


class Bootstrap(NamedTuple):
    """What a sampled row's target adds to its own reward: ``reward`` (the discounted rewards of
    the next slates followed), then ``discount`` times the value of the next state of slot
    ``rows`` (the row's own slot where no link was followed)."""

    reward: np.ndarray
    discount: np.ndarray
    rows: np.ndarray


def bootstrap(arrays: dict[str, np.ndarray], capacity: int, idx: np.ndarray, gamma: float, n_step: int) -> Bootstrap:
    """Follow each sampled slot's links up to ``n_step - 1`` slates (the replay's ``arrays`` of
    ``capacity`` slots).

    >>> a = {"successors": np.array([1, 2, -1]), "rewards": np.array([1.0, 3.0, 5.0]),
    ...      "dones": np.array([False, False, True])}
    >>> b = bootstrap(a, 3, np.array([0, 1]), 0.5, 3)
    >>> b.reward.tolist(), b.discount.tolist(), b.rows.tolist()   # both end where the session does
    ([2.75, 2.5], [0.0, 0.0], [2, 2])
    >>> bootstrap(a, 3, np.array([0]), 0.5, 1).discount.tolist()    # one step: gamma (1 - d)
    [0.5]
    """
    successors, rewards, dones = arrays[SUCCESSORS.name], arrays["rewards"], arrays["dones"]
    discount = gamma * (1.0 - dones[idx].astype(np.float64))
    reward = np.zeros(len(idx))
    rows = idx.copy()
    for _ in range(n_step - 1):
        nxt = successors[rows]
        follow = (nxt >= 0) & (discount > 0)
        if not follow.any():
            break
        slot = np.where(follow, nxt % capacity, rows)
        reward = np.where(follow, reward + discount * rewards[slot], reward)
        discount = np.where(follow, discount * gamma * (1.0 - dones[slot].astype(np.float64)), discount)
        rows = slot
    return Bootstrap(reward.astype(np.float32), discount.astype(np.float32), rows)
