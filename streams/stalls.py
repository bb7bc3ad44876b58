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
  join counts once).

>>> watch = StallWatch(after_s=15)
>>> [watch.check("tp", position=7, now=t) for t in (0, 10, 15, 20, 30)]
[None, None, 'resume', None, 'seek']
>>> watch.check("tp", position=9, now=31)   # delivered meanwhile: the clock starts again
>>> watch.check("tp", position=9, now=46)
'resume'
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, NamedTuple

Action = Literal["resume", "seek"]


class _Since(NamedTuple):
    position: int
    since: float
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
            self._seen[tp] = _Since(position, now, resumed=False)
            return None
        if now - last.since < self.after_s:
            return None
        self._seen[tp] = _Since(position, now, resumed=True)
        return "seek" if last.resumed else "resume"

    def forget(self, tp: Hashable) -> None:
        """``tp`` has nothing unread (or is no longer ours)."""
        self._seen.pop(tp, None)
