"""One valid example of every event, keyed as it travels: docs, demo and tests share them.

>>> sorted(EXAMPLES) == sorted(["requests", "slates", "impressions", "feedback", "items",
...                             "transitions", "user-state", "dlq"])
True
"""

from __future__ import annotations

import json
import struct

from shelfq.contracts.events import (
    DeadLetter,
    Event,
    Feedback,
    Impression,
    Interaction,
    Item,
    Request,
    Slate,
    State,
    Transition,
    UserState,
)
from shelfq.contracts.models import ModelHeaders

T0 = 1767225600.0  # 2026-01-01T00:00:00Z

_HISTORY = [
    Interaction(item_id="sku-17", event="click", ts=T0 - 300),
    Interaction(item_id="sku-17", event="add_to_cart", ts=T0 - 290),
]
_STATE = State(history=_HISTORY, context={"device": "mobile", "page": "home"})

_BAD_REQUEST = '{"schema":"shelfq.request.v1","request_id":"r-1","user_id":"u-42","ts":1767225600.0,"slate_size":500}'

#: (key, event) per logical topic
EXAMPLES: dict[str, tuple[str, Event]] = {
    "requests": (
        "u-42",
        Request(
            request_id="req-9f1c",
            user_id="u-42",
            session_id="s-7",
            ts=T0,
            slate_size=3,
            candidates=["sku-3", "sku-8", "sku-21", "sku-34"],
            context={"device": "mobile", "page": "home"},
        ),
    ),
    "slates": (
        "u-42",
        Slate(
            request_id="req-9f1c",
            user_id="u-42",
            session_id="s-7",
            ts=T0 + 0.004,
            items=["sku-21", "sku-3", "sku-34"],
            scores=[2.31, 1.87, 0.42],
            propensities=[0.9, 0.85, 0.5],
            policy="dqn",
            model_version=12,
            state=_STATE,
        ),
    ),
    "impressions": (
        "u-42",
        Impression(
            request_id="req-9f1c",
            user_id="u-42",
            session_id="s-7",
            ts=T0 + 0.2,
            items=["sku-21", "sku-3", "sku-34"],
        ),
    ),
    "feedback": (
        "u-42",
        Feedback(
            request_id="req-9f1c",
            user_id="u-42",
            session_id="s-7",
            ts=T0 + 4.5,
            event="purchase",
            item_id="sku-3",
            value=24.9,
        ),
    ),
    "items": (
        "sku-3",
        Item(item_id="sku-3", title="Stainless steel water bottle, 750 ml", category="outdoor", price=24.9, ts=T0 - 86400),
    ),
    "transitions": (
        "u-42",
        Transition(
            transition_id="req-9f1c:1",
            request_id="req-9f1c",
            user_id="u-42",
            session_id="s-7",
            state=_STATE,
            action="sku-3",
            position=1,
            slate=["sku-21", "sku-3", "sku-34"],
            reward=8.0,
            reward_parts={"click": 1, "add_to_cart": 1, "purchase": 1},
            next_state=State(
                history=[*_HISTORY, Interaction(item_id="sku-3", event="click", ts=T0 + 2.0),
                         Interaction(item_id="sku-3", event="add_to_cart", ts=T0 + 3.1),
                         Interaction(item_id="sku-3", event="purchase", ts=T0 + 4.5)],
                context=_STATE.context,
            ),
            done=False,
            propensity=0.85,
            policy="dqn",
            model_version=12,
            ts_impression=T0 + 0.2,
            ts_emitted=T0 + 4.51,
        ),
    ),
    "user-state": (
        "u-42",
        UserState(user_id="u-42", history=[*_HISTORY, Interaction(item_id="sku-3", event="purchase", ts=T0 + 4.5)], ts=T0 + 4.5),
    ),
    "dlq": (
        "u-42",
        DeadLetter(
            component="agent",
            reason="invalid",
            detail="slate_size: out of range: expected `int` <= 100",
            topic="shelfq.requests",
            partition=2,
            offset=1041,
            key="u-42",
            value=_BAD_REQUEST,
            value_bytes=len(_BAD_REQUEST),
            ts=T0 + 0.01,
        ),
    ),
}


def example_model() -> tuple[bytes, ModelHeaders]:
    """A tiny safetensors buffer (one 2x2 float32 tensor of zeros) and its headers."""
    header = json.dumps({"q.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    value = struct.pack("<Q", len(header)) + header + bytes(16)
    return value, ModelHeaders(policy="dqn", version=12, created_ts=T0, config={"gamma": 0.9, "encoder": "gru"})
