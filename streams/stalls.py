"""Noticing an input partition that has unread messages but delivers none, and what to do.

Faust can stop delivering from a partition without pausing it: it drops a partition from its
fetch set while a stream buffer is under pressure and can miss putting it back across a
rebalance, and a message fetched under an older consumer generation is dropped while the fetch
position moves past it. Either way the join's watermark would wait for that partition for ever.
The worker asks ``StallWatch.check`` every tick for each partition with unread messages:

- ``"resume"`` once nothing has been delivered for ``after_s``: put it back among the fetched
  partitions (cheap, and enough for the first cause);
- ``"seek"`` if another ``after_s`` passes without a delivery: fetch again from the first
  offset not processed (for the second cause; anything delivered twice is a duplicate the
  join counts once), and again every ``after_s`` for as long as nothing arrives.

>>> watch = StallWatch(after_s=15)
>>> [watch.check("tp", position=7, now=t) for t in (0, 10, 15, 20, 30, 45)]
[None, None, 'resume', None, 'seek', 'seek']
>>> watch.stalled_s("tp", now=45)
45
>>> watch.check("tp", position=9, now=46)   # delivered meanwhile: the clock starts again
>>> watch.check("tp", position=9, now=61)
'resume'
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, NamedTuple

Action = Literal["resume", "seek"]


class _Since(NamedTuple):
    position: int
    moved: float
    """When the position last moved."""
    acted: float
    """When it last moved or was last acted on."""
    resumed: bool


class StallWatch:
    """Per partition: the next offset to process, since when it has not moved, and whether
    resuming was tried already."""

    def __init__(self, after_s: float) -> None:
        if after_s <= 0:
            raise ValueError(f"after_s must be > 0, got {after_s}")
        self.after_s = after_s
        self._seen: dict[Hashable, _Since] = {}

    def check(self, tp: Hashable, position: int, now: float) -> Action | None:
        """What to do about ``tp``, which has unread messages and next processes ``position``."""
        last = self._seen.get(tp)
        if last is None or last.position != position:
            self._seen[tp] = _Since(position, now, now, resumed=False)
            return None
        if now - last.acted < self.after_s:
            return None
        self._seen[tp] = last._replace(acted=now, resumed=True)
        return "seek" if last.resumed else "resume"

    def unmoved(self, tp: Hashable, position: int) -> bool:
        """Whether the latest check of ``tp`` saw this position already."""
        last = self._seen.get(tp)
        return last is not None and last.position == position

    def stalled_s(self, tp: Hashable, now: float) -> float:
        """How long ``tp``'s position has not moved."""
        last = self._seen.get(tp)
        return 0.0 if last is None else now - last.moved

    def forget(self, tp: Hashable) -> None:
        """``tp`` has nothing unread (or is no longer ours)."""
        self._seen.pop(tp, None)
