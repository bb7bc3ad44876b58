"""The gate's window: the most recent complete impressions of one policy, cut to their first
``positions`` positions, as ``evaluation.offpolicy`` weights them.

Transitions of one impression arrive one by one (the join emits each shown item when its
attribution window closes); an impression enters the window once its first ``positions``
positions are all there, and the oldest leave it. A repeated transition counts once.

>>> from shelfq.learner.synthetic import bait_or_gem_slates
>>> w = Window(size=2, positions=1)
>>> for t in bait_or_gem_slates(3, seed=0):
...     w.add(t)
>>> len(w), [len(i.slate) for i in w.impressions()]   # the newest two, one position each
(2, [1, 1])
"""

from __future__ import annotations

from collections import OrderedDict, deque

from shelfq.contracts.decisions import Interval
from shelfq.contracts.events import Transition
from shelfq.evaluation.estimators import mean_ci
from shelfq.evaluation.logs import LoggedImpression, LoggedPosition

#: Impressions still waiting for positions, at most this many times the window.
OPEN_FACTOR = 4


class Window:
    def __init__(self, size: int, positions: int = 0) -> None:
        self.size, self.positions = size, positions
        self._done: deque[LoggedImpression] = deque(maxlen=size)
        self._done_ids: OrderedDict[str, None] = OrderedDict()
        self._open: OrderedDict[str, LoggedImpression] = OrderedDict()

    def __len__(self) -> int:
        return len(self._done)

    def add(self, t: Transition) -> None:
        depth = len(t.slate) if not self.positions else min(self.positions, len(t.slate))
        if t.position >= depth or t.request_id in self._done_ids:
            return
        imp = self._open.get(t.request_id)
        if imp is None:
            imp = self._open[t.request_id] = LoggedImpression(
                t.request_id, t.user_id, t.policy or "", t.model_version, t.ts_impression, list(t.slate[:depth]),
                t.state, t.session_id, t.arm)
            while len(self._open) > OPEN_FACTOR * self.size:
                self._open.popitem(last=False)  # never completed (its transitions lost or cut)
        imp.positions.setdefault(t.position, LoggedPosition(t.reward, t.reward_parts.get("click", 0),
                                                            t.reward_parts.get("purchase", 0), t.propensity))
        if imp.complete:
            del self._open[t.request_id]
            self._done.append(imp)
            self._done_ids[t.request_id] = None
            while len(self._done_ids) > 2 * self.size:
                self._done_ids.popitem(last=False)

    def impressions(self) -> list[LoggedImpression]:
        return list(self._done)

    def live(self, version: int, last: int) -> Interval | None:
        """The mean reward per impression (of the estimated positions) of the newest ``last``
        impressions that ``version`` served, with its interval; None without any.

        >>> from shelfq.learner.synthetic import bait_or_gem_slates
        >>> w = Window(size=100, positions=2)
        >>> for t in bait_or_gem_slates(50, seed=1):
        ...     w.add(t)
        >>> w.live(0, 10) is None   # the synthetic slates name no model version
        True
        """
        rewards = [sum(p.reward for p in imp.positions.values()) for imp in self._done if imp.model_version == version]
        if not rewards:
            return None
        return as_interval(mean_ci(rewards[-last:])._asdict())


def as_interval(figure: dict | None) -> Interval | None:
    """An ``Estimate`` (as a dict, as ``evaluate_model`` reports it) as a decision's ``Interval``.

    >>> as_interval({"value": 1.0, "low": float("nan"), "high": None, "n": 1, "ess": 1.0}).low is None
    True
    """
    if figure is None:
        return None

    def finite(x: object) -> float | None:
        return float(x) if isinstance(x, int | float) and x == x and abs(x) != float("inf") else None

    return Interval(value=float(figure["value"]), low=finite(figure.get("low")), high=finite(figure.get("high")),
                    n=int(figure.get("n") or 0), ess=finite(figure.get("ess")))
