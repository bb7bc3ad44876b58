"""What the learner reads of a transition: a view decoded in one pass, without the parts it
never uses (event times, ids of request and session, propensity, ...).

Validation of what it does read is the contract's (``contracts.events.decode_view``, the same
field types and bounds as ``Transition``: a reward within +-``MAX_REWARD``, so that it stays
finite as the replay buffer's float32; bounded context numbers), plus the two checks that
matter for training: a finite reward and an action that is the slate's item at ``position``.
A transition failing them goes to ``dlq`` like any invalid event.

>>> from shelfq.contracts.examples import EXAMPLES
>>> from shelfq.contracts.events import encode
>>> t = decode_transition(encode(EXAMPLES["transitions"][1]))
>>> t.transition_id, t.action, t.reward, len(t.next_state.history)
('req-9f1c:1', 'sku-3', 8.0, 5)
>>> decode_transition(encode(EXAMPLES["transitions"][1]).replace(b'"position":1', b'"position":0'))
Traceback (most recent call last):
...
shelfq.contracts.errors.EventError: action: is not the slate's item at position 0
>>> decode_transition(encode(EXAMPLES["transitions"][1]).replace(b'"reward":8.0', b'"reward":1e300'))
Traceback (most recent call last):
...
shelfq.contracts.errors.EventError: reward: out of range: expected `float` <= 1000000.0
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from shelfq.contracts.errors import EventError
from shelfq.contracts.events import (
    MAX_EVENT_BYTES,
    MAX_HISTORY,
    MAX_SLATE_SIZE,
    Context,
    Count,
    Id,
    InteractionKind,
    Reward,
    ShownItems,
    Transition,
    Ts,
    decode_view,
    schema_of,
)


class InteractionView(msgspec.Struct, gc=False):
    item_id: Id
    event: InteractionKind


class StateView(msgspec.Struct, gc=False):
    history: Annotated[list[InteractionView], msgspec.Meta(max_length=MAX_HISTORY)] = []
    context: Context = {}


class TransitionView(msgspec.Struct, tag_field="schema", tag=schema_of(Transition), gc=False):
    """The fields of a transition the learner trains on."""

    transition_id: Id
    request_id: Id
    session_id: Id
    state: StateView
    action: Id
    position: Annotated[int, msgspec.Meta(ge=0, lt=MAX_SLATE_SIZE)]
    slate: ShownItems
    reward: Reward
    reward_parts: dict[str, Count]
    next_state: StateView
    done: bool
    ts_impression: Ts
    policy: Id | None = None


def decode_transition(data: bytes | None, max_bytes: int = MAX_EVENT_BYTES) -> TransitionView:
    t = decode_view(data, TransitionView, max_bytes=max_bytes)
    if not math.isfinite(t.reward):
        raise EventError("reward", "non_finite", f"must be a finite number, got {t.reward}")
    if t.position >= len(t.slate) or t.slate[t.position] != t.action:
        raise EventError("action", "invalid", f"is not the slate's item at position {t.position}")
    return t
