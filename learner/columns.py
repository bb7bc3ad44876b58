"""The replay buffer's columns, declared once.

A transition becomes one row of fixed-width cells (``Featurizer.rows``), the replay buffer keeps
``capacity`` such rows (``learner.replay``), a sample is some of them (``Sample``) and a batch is
a sample on the training device (``learner.dqn.Batch``). All four are the fields of ``Rows``:
each field's dtype and width are declared there, and the rest derive from it, so a column is
added in one place. What is not a field of ``Rows`` is not a transition's: the keys that link a
row to its session's next slate (``LINK_COLUMNS``, read once as rows arrive) and the buffer's own
bookkeeping (``PRIORITIES``, ``SUCCESSORS``).

>>> ROW_FIELDS[:4], len(ROW_FIELDS)
(('items', 'events', 'next_items', 'next_events'), 14)
>>> COLUMNS["slates"].dtype, COLUMNS["slates"].shape(4, {"history": 3, "context": 8, "slate": 5})
(dtype('int32'), (4, 5))
>>> SUCCESSORS.fill, SUCCESSORS.shape(4, {})
(-1, (4,))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import numpy as np

#: How many cells a column has per row: one, or as many as the buffer's history length, its
#: context entries (``features.MAX_CONTEXT``) or its slate width.
Width = Literal["history", "context", "slate"] | None


@dataclass(frozen=True)
class Column:
    """One column: its name, numpy dtype, cells per row and the value of an empty row."""

    name: str
    dtype: np.dtype
    width: Width = None
    fill: int = 0

    def shape(self, rows: int, widths: Mapping[str, int]) -> tuple[int, ...]:
        """The shape of ``rows`` rows of this column, given the buffer's ``widths``."""
        return (rows,) if self.width is None else (rows, widths[self.width])

    def empty(self, rows: int, widths: Mapping[str, int]) -> np.ndarray:
        """``rows`` empty rows: zeros (lazily paged, as np.zeros is) unless ``fill`` says otherwise."""
        if self.fill == 0:
            return np.zeros(self.shape(rows, widths), self.dtype)
        return np.full(self.shape(rows, widths), self.fill, self.dtype)


def _spec(dtype: type[np.generic], width: Width = None) -> dict[str, Any]:
    """A ``Rows`` field's metadata: the column's dtype and width."""
    return {"dtype": np.dtype(dtype), "width": width}


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rows(Generic[T]):
    """The columns of featurized transitions, one cell array per field: numpy arrays in the
    buffer and in a ``Sample``, tensors in a ``Batch``. Integer columns are item, event or
    context rows (hash buckets, 0 is padding)."""

    items: T = field(metadata=_spec(np.int32, "history"))
    """The state's recent items, left-padded: the newest is last."""
    events: T = field(metadata=_spec(np.int8, "history"))
    """What the shopper did with each of them (``features.EVENT_IDS``)."""
    next_items: T = field(metadata=_spec(np.int32, "history"))
    next_events: T = field(metadata=_spec(np.int8, "history"))
    context: T = field(metadata=_spec(np.int32, "context"))
    """The state's context entries as hashed rows."""
    context_weights: T = field(metadata=_spec(np.float32, "context"))
    actions: T = field(metadata=_spec(np.int32))
    """The shown item's row."""
    positions: T = field(metadata=_spec(np.int64))
    rewards: T = field(metadata=_spec(np.float32))
    dones: T = field(metadata=_spec(np.bool_))
    clicks: T = field(metadata=_spec(np.bool_))
    """Whether the shown item was clicked (what SlateQ's choice model learns from)."""
    quiet: T = field(metadata=_spec(np.bool_))
    """No feedback on any shown item: the slate's no-click option was taken."""
    slates: T = field(metadata=_spec(np.int32, "slate"))
    """The slate's first items as rows, right-padded with 0 (the click model's competitors)."""
    chosen: T = field(metadata=_spec(np.bool_))
    """A policy chose the item for a slate; False for an organic impression
    (``contracts.events.ORGANIC``), logged only because the shopper found the item and clicked
    it: counted as a choice, it would teach the click model that whatever a recommender did
    not show gets clicked, and whatever it showed does not."""

    def cells(self) -> dict[str, T]:
        """The fields by name."""
        return {name: getattr(self, name) for name in ROW_FIELDS}


#: The columns of ``Rows``: what ``Featurizer.rows`` makes and the replay buffer stores.
ROW_COLUMNS = tuple(Column(f.name, f.metadata["dtype"], f.metadata["width"]) for f in dataclasses.fields(Rows))
ROW_FIELDS = tuple(c.name for c in ROW_COLUMNS)
#: What ``Featurizer.rows`` adds beside them for linking each row to its session's next slate
#: (``learner.sessions``): hashed session and request ids and the impression time. Not stored.
LINK_COLUMNS = (Column("session_keys", np.dtype(np.int64)), Column("request_keys", np.dtype(np.int64)),
                Column("impression_ts", np.dtype(np.float64)))
LINK_FIELDS = tuple(c.name for c in LINK_COLUMNS)
#: The replay buffer's own per-row columns: each row's priority (prioritized replay), and the
#: number (of rows ever added) of the next slate's row in the same session, or -1: what n-step
#: targets follow (``learner.sessions``). ``successors`` came after the first checkpoints.
PRIORITIES = Column("priorities", np.dtype(np.float64))
SUCCESSORS = Column("successors", np.dtype(np.int64), fill=-1)
#: Every per-row column of the replay buffer, by name.
COLUMNS = {c.name: c for c in (*ROW_COLUMNS, PRIORITIES, SUCCESSORS)}


def take(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The ``Rows`` columns of ``arrays`` at rows ``idx`` (keyword arguments of a ``Rows``)."""
    return {name: arrays[name][idx] for name in ROW_FIELDS}
