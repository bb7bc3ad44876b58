"""Event contracts: valid examples round-trip; malformed input is rejected naming the field."""

from __future__ import annotations

import json

import msgspec
import pytest

from shelfq.contracts.errors import EventError
from shelfq.contracts.events import (
    EVENT_TYPES,
    Feedback,
    Impression,
    Item,
    Request,
    Slate,
    Transition,
    decode,
    encode,
    schema_of,
)
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.topics import EVENT_OF_TOPIC


@pytest.mark.parametrize("topic", sorted(EXAMPLES))
def test_every_example_round_trips(topic: str) -> None:
    _key, event = EXAMPLES[topic]
    assert isinstance(event, EVENT_OF_TOPIC[topic])
    data = encode(event)
    assert json.loads(data)["schema"] == schema_of(type(event))
    assert decode(data, type(event)) == event


def test_every_event_type_has_an_example() -> None:
    assert {type(e) for _k, e in EXAMPLES.values()} == set(EVENT_TYPES)


def test_unknown_fields_are_ignored() -> None:
    doc = json.loads(encode(EXAMPLES["requests"][1]))
    doc["added_in_a_later_version"] = {"nested": [1, 2]}
    assert decode(json.dumps(doc).encode(), Request) == EXAMPLES["requests"][1]


def _with(topic: str, **changes: object) -> bytes:
    """The topic's example as JSON, with fields changed (or dropped with _DROP)."""
    doc = json.loads(encode(EXAMPLES[topic][1]))
    for key, value in changes.items():
        if value is _DROP:
            doc.pop(key)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


_DROP = object()


def _request(**changes: object) -> bytes:
    return _with("requests", **changes)

# (case, payload, event type, field named, kind of problem)
MALFORMED = [
    ("not json", b'{"schema": "shelfq.request.v1", ', Request, "", "malformed"),
    ("not an object", b"[1, 2, 3]", Request, "", "wrong_type"),
    ("missing schema", _request(schema=_DROP), Request, "schema", "missing"),
    ("unknown schema version", _request(schema="shelfq.request.v2"), Request, "schema", "unknown_schema"),
    ("another kind", _with("feedback"), Request, "schema", "wrong_kind"),
    ("missing user_id", _request(user_id=_DROP), Request, "user_id", "missing"),
    ("user_id wrong type", _request(user_id=42), Request, "user_id", "wrong_type"),
    ("empty request_id", _request(request_id=""), Request, "request_id", "out_of_range"),
    ("slate_size too big", _request(slate_size=101), Request, "slate_size", "out_of_range"),
    ("slate_size zero", _request(slate_size=0), Request, "slate_size", "out_of_range"),
    ("slate_size a string", _request(slate_size="10"), Request, "slate_size", "wrong_type"),
    ("too many candidates", _request(candidates=[f"i{n}" for n in range(10_001)]), Request, "candidates", "too_many"),
    ("duplicate candidate", _request(candidates=["a", "b", "a"]), Request, "candidates", "invalid"),
    ("candidate wrong type", _request(candidates=["a", 7]), Request, "candidates[1]", "wrong_type"),
    ("nested context", _request(context={"page": {"deep": 1}}), Request, "context[...]", "wrong_type"),
    ("negative ts", _request(ts=-5), Request, "ts", "out_of_range"),
    ("ts NaN", json.dumps({**json.loads(_request()), "ts": float("nan")}).encode(), Request, "ts", "non_finite"),
    ("ts Infinity", json.dumps({**json.loads(_request()), "ts": float("inf")}).encode(), Request, "ts", "non_finite"),
    ("ts overflows", _request().replace(b'"ts": 1767225600.0', b'"ts": 1e999'), Request, "ts", "non_finite"),
    ("unknown feedback event", _with("feedback", event="like"), Feedback, "event", "invalid"),
    ("click without item", _with("feedback", event="click", item_id=_DROP), Feedback, "item_id", "missing"),
    ("exit with item", _with("feedback", event="exit"), Feedback, "item_id", "invalid"),
    ("negative price", _with("items", price=-1), Item, "price", "out_of_range"),
    ("scores misaligned", _with("slates", scores=[1.0]), Slate, "scores", "invalid"),
    ("propensity above 1", _with("slates", propensities=[0.5, 1.5, 0.1]), Slate, "propensities[1]", "out_of_range"),
    ("history entry lacks ts", _with("slates", state={"history": [{"item_id": "a", "event": "click"}]}), Slate, "state.history[0].ts", "missing"),
    ("repeated shown item", _with("impressions", items=["a", "a"]), Impression, "items", "invalid"),
    ("no item shown", _with("impressions", items=[]), Impression, "items", "out_of_range"),
    ("transition id mismatch", _with("transitions", transition_id="req-9f1c:2"), Transition, "transition_id", "invalid"),
    ("action not at position", _with("transitions", action="sku-21"), Transition, "action", "invalid"),
]


@pytest.mark.parametrize("case,payload,kind,field,problem", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_rejected_with_field_and_problem(case, payload, kind, field, problem) -> None:
    with pytest.raises(EventError) as info:
        decode(payload, kind)
    err = info.value
    assert (err.field, err.kind) == (field, problem), str(err)
    assert str(err).startswith(f"{field}: " if field else "message: ")


def test_payload_over_the_size_limit_is_rejected_before_parsing() -> None:
    data = _request()
    with pytest.raises(EventError) as info:
        decode(data, Request, max_bytes=len(data) - 1)
    assert info.value.kind == "too_large"
    assert f"{len(data)} bytes" in str(info.value)


def test_null_value_is_rejected() -> None:
    with pytest.raises(EventError, match="value is empty"):
        decode(None, Request)


def test_constructing_an_invalid_event_in_python_fails_too() -> None:
    with pytest.raises(ValueError, match="ts: non_finite"):
        Request(request_id="r", user_id="u", ts=float("nan"))
    with pytest.raises(ValueError, match="item_id"):
        Feedback(request_id="r", user_id="u", session_id="s", ts=1.0, event="purchase")


def test_defaults_are_omitted_and_restored() -> None:
    req = Request(request_id="r", user_id="u", ts=1.0)
    assert json.loads(encode(req)) == {"schema": "shelfq.request.v1", "request_id": "r", "user_id": "u", "ts": 1.0}
    assert decode(encode(req), Request).slate_size == 10


def test_events_are_immutable() -> None:
    req = Request(request_id="r", user_id="u", ts=1.0)
    with pytest.raises(AttributeError):
        req.user_id = "other"  # type: ignore[misc]
    assert msgspec.structs.replace(req, user_id="other").user_id == "other"
