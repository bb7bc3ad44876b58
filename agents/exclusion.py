"""Which candidates a slate may not hold: the request's ``exclude`` list, and what the user
already bought (or clicked), as the request's state shows it.

The result is a mask over the candidates, not a shorter list: the catalog stays one list
object for every request, so the DQN policy's cached item vectors and one encoder pass still
serve, and the policies draw over the allowed items only (``agents.exploration``).

>>> state = State(history=[Interaction(item_id="b", event="purchase", ts=1.0),
...                        Interaction(item_id="c", event="click", ts=2.0)])
>>> sorted(excluded_items(["x"], state.history, "purchased"))
['b', 'x']
>>> sorted(excluded_items(None, state.history, "clicked"))
['b', 'c']
>>> allowed_mask(["a", "b", "c"], {"b", "zz"}).tolist()
[True, False, True]
>>> allowed_mask(["a", "c"], {"b"}) is None   # nothing to leave out: no mask, the fast path
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from shelfq.contracts.events import Interaction, State  # noqa: F401 - State: the doctest's

#: exclude_seen setting -> the interactions that leave an item out of the user's slates
SEEN_EVENTS: Mapping[str, frozenset[str]] = {
    "none": frozenset(),
    "purchased": frozenset({"purchase"}),
    "clicked": frozenset({"click", "add_to_cart", "purchase"}),
}


def excluded_items(exclude: Iterable[str] | None, history: Iterable[Interaction], seen: str) -> set[str]:
    """The request's ``exclude`` plus the items of ``history`` with an event that ``seen``
    (an ``exclude_seen`` setting) leaves out."""
    events = SEEN_EVENTS[seen]
    out = set(exclude or ())
    if events:
        out.update(i.item_id for i in history if i.event in events)
    return out


def allowed_mask(candidates: Sequence[str], excluded: set[str],
                 positions: Mapping[str, int] | None = None) -> np.ndarray | None:
    """True where the candidate may be in the slate; None when none is excluded.

    ``positions`` (candidate -> index, for the catalog) makes it cost the excluded items, not
    the candidates: a long catalog with a few exclusions is one copy of a bool array."""
    if not excluded:
        return None
    if positions is not None:
        hits = [i for i in (positions.get(e) for e in excluded) if i is not None]
        if not hits:
            return None
        mask = np.ones(len(candidates), dtype=bool)
        mask[hits] = False
        return mask
    mask = np.fromiter((c not in excluded for c in candidates), dtype=bool, count=len(candidates))
    return None if mask.all() else mask
