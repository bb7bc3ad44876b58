"""From events to the integer arrays the Q-network reads. Pure numpy; no torch, no Kafka.

Item ids are hashed into a fixed table (``hash_buckets`` rows), so an id never seen before
still has a row and the model never has to grow; row 0 is padding. The hash is stable across
processes and machines (blake2b, not Python's salted ``hash``), because the learner and every
agent replica must agree on it.

>>> f = Featurizer(hash_buckets=1000, history_length=3)
>>> f.bucket("sku-1") == f.bucket("sku-1") and 1 <= f.bucket("sku-1") < 1000
True
>>> from shelfq.contracts.events import Interaction, State
>>> s = State(history=[Interaction(item_id="a", event="click", ts=1.0),
...                    Interaction(item_id="b", event="purchase", ts=2.0)], context={"device": "app"})
>>> items, events, context, weights = f.states([s])
>>> events.tolist()                      # left-padded: the newest interaction is last
[[0, 1, 3]]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from shelfq.contracts.events import ORGANIC, State
from shelfq.learner.columns import LINK_COLUMNS, ROW_COLUMNS
from shelfq.learner.columns import LINK_FIELDS as LINK_FIELDS  # where the tests of the links read them

EVENT_IDS = {"click": 1, "add_to_cart": 2, "purchase": 3}
EVENT_KINDS = len(EVENT_IDS) + 1  # plus padding
MAX_CONTEXT = 8  # context entries read per state
_CACHE_LIMIT = 1 << 20
ROW_AND_LINK_COLUMNS = ROW_COLUMNS + LINK_COLUMNS  # what ``Featurizer.rows`` returns, in this order


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that every process computes the same way.

    >>> stable_hash("sku-1") == stable_hash("sku-1") != stable_hash("sku-2")
    True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Featurizer:
    """Maps ids, states and transitions to arrays, with a bounded cache of item hashes."""

    def __init__(self, hash_buckets: int, history_length: int, context_buckets: int = 1024,
                 slate_width: int = 10) -> None:
        """``slate_width``: how many of a transition's shown items its ``slates`` row keeps (the
        click model's competitors; 0-padded)."""
        if hash_buckets < 2 or history_length < 1 or context_buckets < 2 or slate_width < 1:
            raise ValueError("hash_buckets and context_buckets must be >= 2, history_length and slate_width >= 1")
        self.slate_width = slate_width
        self.hash_buckets = hash_buckets
        self.history_length = history_length
        self.context_buckets = context_buckets
        self._buckets: dict[str, int] = {}
        self._contexts: dict[tuple, tuple[list[int], list[float]]] = {}

    def bucket(self, item_id: str) -> int:
        """The item table row of ``item_id`` (1..hash_buckets-1; 0 is padding)."""
        b = self._buckets.get(item_id)
        if b is None:
            if len(self._buckets) >= _CACHE_LIMIT:
                self._buckets.clear()  # a cache, not a registry: recomputing is cheap
            b = self._buckets[item_id] = 1 + stable_hash(item_id) % (self.hash_buckets - 1)
        return b

    def buckets(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.bucket(i) for i in item_ids), dtype=np.int32, count=len(item_ids))

    def context(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """Context entries as hashed rows with weights: ``key=value`` for text (weight 1),
        ``key`` for numbers (weight = the value, clipped to +-10).

        >>> f = Featurizer(1000, 2, context_buckets=64)
        >>> rows, weights = f.context(State(context={"device": "app", "hour": 3}))
        >>> int((rows > 0).sum()), sorted(weights.tolist())[-2:]
        (2, [1.0, 3.0])
        """
        rows, weights = np.zeros(MAX_CONTEXT, np.int32), np.zeros(MAX_CONTEXT, np.float32)
        for j, (key, value) in enumerate(sorted(state.context.items())[:MAX_CONTEXT]):
            if isinstance(value, str):
                rows[j], weights[j] = self._context_row(f"{key}={value}"), 1.0
            else:
                rows[j], weights[j] = self._context_row(key), float(max(-10.0, min(10.0, value)))
        return rows, weights

    def _context_row(self, text: str) -> int:
        return 1 + stable_hash("ctx:" + text) % (self.context_buckets - 1)

    def rows(self, transitions: Sequence[Any]) -> dict[str, np.ndarray]:
        """Transitions (or the learner's ``TransitionView``s) as arrays with a leading batch
        axis, named by ``ROW_FIELDS`` and ``LINK_FIELDS`` and typed as ``learner.columns`` declares.
        Built from flat lists, one array per field: this is the ingestion's hot path.

        >>> from shelfq.learner.synthetic import bait_or_build
        >>> r = Featurizer(1000, 3).rows(bait_or_build(2, seed=0))
        >>> r["items"].shape, r["actions"].dtype, r["rewards"].tolist()
        ((2, 3), dtype('int32'), [0.5, 1.0])
        """
        cached, bucket = self._buckets.get, self.bucket
        items, events = self._histories([t.state for t in transitions], np.int32)
        next_items, next_events = self._histories([t.next_state for t in transitions], np.int32)
        context, weights = self._contexts_of([t.state for t in transitions], np.int32)
        cells = {
            "items": items, "events": events, "next_items": next_items, "next_events": next_events,
            "context": context, "context_weights": weights,
            "actions": [cached(t.action) or bucket(t.action) for t in transitions],
            "positions": [t.position for t in transitions],
            "rewards": [t.reward for t in transitions],
            "dones": [t.done for t in transitions],
            "clicks": [bool(t.reward_parts.get("click")) for t in transitions],
            "quiet": [_quiet(t.state.history, t.next_state.history) for t in transitions],
            "slates": self._slates([t.slate for t in transitions]),
            "chosen": [t.policy != ORGANIC for t in transitions],
            "session_keys": _keys([t.session_id for t in transitions]),
            "request_keys": _keys([t.request_id for t in transitions]),
            "impression_ts": [t.ts_impression for t in transitions],
        }
        return {c.name: np.asarray(cells[c.name], c.dtype) for c in ROW_AND_LINK_COLUMNS}

    def _slates(self, slates: Sequence[Sequence[str]]) -> np.ndarray:
        """The first ``slate_width`` shown items of each slate as item rows, right-padded with 0."""
        W, cached, bucket = self.slate_width, self._buckets.get, self.bucket
        rows: list[int] = []
        for slate in slates:
            shown = slate[:W]
            rows += [cached(i) or bucket(i) for i in shown] + [0] * (W - len(shown))
        return np.array(rows, np.int32).reshape(-1, W)

    def states(self, states: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """States as the encoder reads them: (items, events, context rows, context weights),
        int64/float32 arrays with a batch axis, ready for ``torch.from_numpy``."""
        return (*self._histories(states, np.int64), *self._contexts_of(states, np.int64))

    def _histories(self, states: Sequence[Any], dtype: type) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``history_length`` interactions of each state as (buckets, event ids),
        left-padded, [n, L]; built from flat lists, one array each (the hot path)."""
        L = self.history_length
        cached, bucket, kinds = self._buckets.get, self.bucket, EVENT_IDS
        items: list[int] = []
        events: list[int] = []
        for state in states:
            recent = state.history[-L:]
            pad = [0] * (L - len(recent))
            items += pad + [cached(i.item_id) or bucket(i.item_id) for i in recent]
            events += pad + [kinds[i.event] for i in recent]
        return np.array(items, dtype).reshape(-1, L), np.array(events, dtype).reshape(-1, L)

    def _contexts_of(self, states: Sequence[Any], dtype: type) -> tuple[np.ndarray, np.ndarray]:
        rows: list[int] = []
        weights: list[float] = []
        for state in states:
            r, w = self._context_lists(state)
            rows += r
            weights += w
        return np.array(rows, dtype).reshape(-1, MAX_CONTEXT), np.array(weights, np.float32).reshape(-1, MAX_CONTEXT)

    def _context_lists(self, state: Any) -> tuple[list[int], list[float]]:
        key = tuple(sorted(state.context.items()))  # contexts repeat: hash each one once
        hit = self._contexts.get(key)
        if hit is None:
            if len(self._contexts) >= _CACHE_LIMIT:
                self._contexts.clear()
            rows, weights = self.context(state)
            hit = self._contexts[key] = (rows.tolist(), weights.tolist())
        return hit


def _keys(ids: Sequence[str]) -> np.ndarray:
    """Ids as 63-bit stable hashes (int64), each distinct id hashed once: a slate's rows come
    together and share their request and session."""
    seen: dict[str, int] = {}
    return np.array([seen.get(i) or seen.setdefault(i, stable_hash(i) >> 1) for i in ids], np.int64)


def _quiet(history: Sequence[Any], next_history: Sequence[Any]) -> bool:
    """No feedback on any shown item (the shopper took the slate's no-click option): the next
    state adds nothing, so it is the state's history, or its newest part when the join keeps
    fewer interactions than a state it was given carried.

    >>> _quiet([1, 2, 3], [2, 3]), _quiet([1, 2, 3], [3, 4]), _quiet([], [])
    (True, False, True)
    """
    n = len(next_history)
    return n <= len(history) and list(next_history) == list(history[len(history) - n:])
