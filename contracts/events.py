"""Typed event models for every topic of DESIGN.md, with JSON encode/decode and validation.

Events are frozen msgspec Structs: decoding JSON and validating types and ranges happens in one
C pass (about half a microsecond for a small event), and the rules that span fields live in
``__post_init__``. Each event carries ``"schema": "shelfq.<kind>.v1"`` as its tag, so decoding
checks the kind and the version too. Unknown fields are ignored; optional fields left at their
default are omitted when encoding.

>>> req = Request(request_id="r1", user_id="u1", ts=1700000000.0, candidates=["a", "b"])
>>> encode(req)
b'{"schema":"shelfq.request.v1","request_id":"r1","user_id":"u1","ts":1700000000.0,"candidates":["a","b"]}'
>>> decode(encode(req), Request) == req
True
>>> decode(b'{"schema":"shelfq.request.v1","request_id":"r1","user_id":"u1","ts":1,"slate_size":0}', Request)
Traceback (most recent call last):
...
shelfq.contracts.errors.EventError: slate_size: out of range: expected `int` >= 1
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Literal, TypeVar, Union, cast

import msgspec

from shelfq.contracts.errors import EventError

#: Default limit on one encoded event; the settings object can lower or raise it.
MAX_EVENT_BYTES = 1 << 20
MAX_CANDIDATES = 10_000
MAX_SLATE_SIZE = 100
MAX_HISTORY = 1_000
#: DESIGN.md's default reward weights per feedback event (the join's setting can change them).
DEFAULT_REWARD_WEIGHTS: Mapping[str, float] = MappingProxyType({"click": 1.0, "add_to_cart": 2.0, "purchase": 5.0})
#: Interactions a state and a user-state carry by default (SHELFQ_JOIN_HISTORY_LENGTH).
DEFAULT_HISTORY_LENGTH = 50
#: The ``policy`` of an impression no recommender chose: an item the shopper reached by other
#: means (search, navigation, a link), which the frontend logs so that its click is joined.
#: Such impressions count in histories, values and what-follows-what, not in the click model.
ORGANIC = "organic"

# Bounds on every number an event carries. JSON numbers are unbounded and Python's ints too,
# but consumers hold them as float32 (featurizer, replay buffer: at most ~3.4e38), float64
# (float() of a 400-digit int raises) or int64: a value must survive all of them.
#: Latest event time, epoch seconds: 3000-01-01T00:00:00Z (milliseconds by mistake are refused).
MAX_TS = 32_503_680_000.0
#: Largest reward magnitude of a transition (the join's weighted sum of a few feedback kinds).
MAX_REWARD = 1e6
#: Largest price or purchase value.
MAX_MONEY = 1e9
#: Largest magnitude of a number in a context (exact as float64 well below 2**53).
MAX_CONTEXT_NUMBER = 10**15
#: Largest magnitude of a float32 (slate scores are the Q-network's float32 outputs).
FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Ts = Annotated[float, msgspec.Meta(ge=0, le=MAX_TS)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Money = Annotated[float, msgspec.Meta(ge=0, le=MAX_MONEY)]
Reward = Annotated[float, msgspec.Meta(ge=-MAX_REWARD, le=MAX_REWARD)]
Score = Annotated[float, msgspec.Meta(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Int64 = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
ContextNumber = Union[
    Annotated[int, msgspec.Meta(ge=-MAX_CONTEXT_NUMBER, le=MAX_CONTEXT_NUMBER)],
    Annotated[float, msgspec.Meta(ge=-MAX_CONTEXT_NUMBER, le=MAX_CONTEXT_NUMBER)],
]
#: A request's context is copied into its slate and twice into each transition: bounded so that
#: what is derived from a valid request stays far below the broker's message size.
MAX_CONTEXT_ENTRIES = 64
ContextKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ContextText = Annotated[str, msgspec.Meta(max_length=256)]
Context = Annotated[dict[ContextKey, Union[ContextText, ContextNumber]], msgspec.Meta(max_length=MAX_CONTEXT_ENTRIES)]
FeedbackKind = Literal["click", "add_to_cart", "purchase", "exit"]
InteractionKind = Literal["click", "add_to_cart", "purchase"]
ShownItems = Annotated[list[Id], msgspec.Meta(min_length=1, max_length=MAX_SLATE_SIZE)]


def _require_finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name}: non_finite: must be a finite number, got {value}")


def _require_distinct(name: str, items: list[str]) -> None:
    if len(set(items)) != len(items):
        seen: set[str] = set()
        dup = next(i for i in items if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"{name}: invalid: item id {dup!r} appears twice")


def _require_aligned(name: str, values: list | None, items: list[str]) -> None:
    if values is not None and len(values) != len(items):
        raise ValueError(
            f"{name}: invalid: has {len(values)} entries but items has {len(items)}"
        )


class _Struct(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Shared configuration: immutable, keyword-only, defaults left out of the JSON."""


class Event(_Struct, tag_field="schema", frozen=True):
    """Base of all top-level events; the ``schema`` tag names kind and version."""

    def __post_init__(self) -> None:
        _require_finite("ts", getattr(self, "ts", None))


class Interaction(_Struct, frozen=True):
    """One entry of a user's history: what the user did with which item, and when."""

    item_id: Id
    event: InteractionKind
    ts: Ts

    def __post_init__(self) -> None:
        _require_finite("ts", self.ts)


class State(_Struct, frozen=True):
    """The MDP state as the agent saw it: recent interactions plus the request context."""

    history: Annotated[list[Interaction], msgspec.Meta(max_length=MAX_HISTORY)] = []
    context: Context = {}


class Request(Event, tag="shelfq.request.v1", frozen=True):
    """A frontend asks for a slate. Keyed by user_id on the ``requests`` topic.

    ``exclude`` names items the slate must not hold (the frontend will not show them: in the
    cart, out of stock, on the page already); it may name items that are not candidates. Left
    out, it is not encoded.

    >>> encode(Request(request_id="r1", user_id="u1", ts=1.0, exclude=["a"]))
    b'{"schema":"shelfq.request.v1","request_id":"r1","user_id":"u1","ts":1.0,"exclude":["a"]}'
    >>> decode(b'{"schema":"shelfq.request.v1","request_id":"r1","user_id":"u1","ts":1,"exclude":["a","a"]}', Request)
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.EventError: exclude: item id 'a' appears twice
    """

    request_id: Id
    user_id: Id
    ts: Ts
    session_id: Id | None = None
    slate_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_SLATE_SIZE)] = 10
    candidates: Annotated[list[Id], msgspec.Meta(max_length=MAX_CANDIDATES)] | None = None
    exclude: Annotated[list[Id], msgspec.Meta(max_length=MAX_CANDIDATES)] | None = None
    context: Context | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates is not None:
            _require_distinct("candidates", self.candidates)
        if self.exclude is not None:
            _require_distinct("exclude", self.exclude)


class Slate(Event, tag="shelfq.slate.v1", frozen=True):
    """The agent's answer and decision log: ranked items with scores and propensities.

    ``arm`` names the experiment arm that served it (``agents.arms``: users split by a stable
    hash); a slate served outside an experiment has none, and it is not encoded.

    >>> from shelfq.contracts.examples import EXAMPLES
    >>> slate = msgspec.structs.replace(EXAMPLES["slates"][1], arm="longterm")
    >>> decode(encode(slate), Slate).arm, b'"arm"' in encode(EXAMPLES["slates"][1])
    ('longterm', False)
    """

    request_id: Id
    user_id: Id
    session_id: Id
    ts: Ts
    items: ShownItems
    scores: list[Score]
    propensities: list[Probability]
    policy: Id
    model_version: Count | None = None
    state: State = State()
    arm: Id | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_distinct("items", self.items)
        _require_aligned("scores", self.scores, self.items)
        _require_aligned("propensities", self.propensities, self.items)
        for i, score in enumerate(self.scores):
            _require_finite(f"scores[{i}]", score)


class Impression(Event, tag="shelfq.impression.v1", frozen=True):
    """What the frontend actually showed, in position order.

    ``state``, ``propensities``, ``policy`` and ``model_version`` may come inline (replayed
    logs, frontends that do not use the agent); otherwise the join takes them from the slate
    with the same request_id.
    """

    request_id: Id
    user_id: Id
    session_id: Id
    ts: Ts
    items: ShownItems
    state: State | None = None
    propensities: list[Probability] | None = None
    policy: Id | None = None
    model_version: Count | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_distinct("items", self.items)
        _require_aligned("propensities", self.propensities, self.items)


class Feedback(Event, tag="shelfq.feedback.v1", frozen=True):
    """What the user did after an impression: click, add_to_cart, purchase, or exit."""

    request_id: Id
    user_id: Id
    session_id: Id
    ts: Ts
    event: FeedbackKind
    item_id: Id | None = None
    value: Money | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_finite("value", self.value)
        if self.event == "exit" and self.item_id is not None:
            raise ValueError("item_id: invalid: an exit event names no item")
        if self.event != "exit" and self.item_id is None:
            raise ValueError(f"item_id: missing: required for event {self.event!r}")


class Item(Event, tag="shelfq.item.v1", frozen=True):
    """A catalog entry, keyed by item_id on the compacted ``items`` topic.

    A tombstone (null value) removes the item; ``decode`` returns ``None`` for it.
    """

    item_id: Id
    ts: Ts
    title: Annotated[str, msgspec.Meta(max_length=1_000)] | None = None
    category: Id | None = None
    price: Money | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require_finite("price", self.price)


class Transition(Event, tag="shelfq.transition.v1", frozen=True):
    """One reward-labelled step (s, a, r, s', done) for one shown item of one impression.

    ``arm`` is the experiment arm of the slate it came from (None outside an experiment, and
    for an impression that carries its own state); it is not encoded when unset.
    """

    transition_id: Id
    request_id: Id
    user_id: Id
    session_id: Id
    state: State
    action: Id
    position: Annotated[int, msgspec.Meta(ge=0, lt=MAX_SLATE_SIZE)]
    slate: ShownItems
    reward: Reward
    reward_parts: dict[str, Count]
    next_state: State
    done: bool
    ts_impression: Ts
    ts_emitted: Ts
    propensity: Probability | None = None
    policy: Id | None = None
    model_version: Count | None = None
    arm: Id | None = None

    def __post_init__(self) -> None:
        _require_finite("reward", self.reward)
        _require_finite("ts_impression", self.ts_impression)
        _require_finite("ts_emitted", self.ts_emitted)
        if self.transition_id != f"{self.request_id}:{self.position}":
            raise ValueError(
                f"transition_id: invalid: must be '<request_id>:<position>', "
                f"i.e. {self.request_id}:{self.position!r}"
            )
        if self.position >= len(self.slate) or self.slate[self.position] != self.action:
            raise ValueError(f"action: invalid: is not the slate's item at position {self.position}")


class UserState(Event, tag="shelfq.user-state.v1", frozen=True):
    """A user's last N interactions, keyed by user_id on the compacted ``user-state`` topic."""

    user_id: Id
    history: Annotated[list[Interaction], msgspec.Meta(max_length=MAX_HISTORY)]
    ts: Ts


class DeadLetter(Event, tag="shelfq.dlq.v1", frozen=True):
    """A message some consumer could not use, with where it came from and why.

    ``reason`` is a short stable code (``invalid``, ``late``, ``orphan``, ...) fit for a metric
    label; ``detail`` is the human explanation. ``value`` is the original value, decoded as
    UTF-8 where it is text and base64 otherwise (``value_encoding``), cut to a size limit.
    """

    component: Id
    reason: Id
    topic: str
    ts: Ts
    detail: str = ""
    partition: Int64 | None = None
    offset: Int64 | None = None
    key: str | None = None
    value: str | None = None
    value_encoding: Literal["utf-8", "base64"] = "utf-8"
    value_bytes: Count = 0
    truncated: bool = False


AnyEvent = Union[Request, Slate, Impression, Feedback, Item, Transition, UserState, DeadLetter]
EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]
E = TypeVar("E", bound=Event)

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AnyEvent)


def schema_of(kind: type[Event]) -> str:
    """The schema tag of an event class, e.g. ``shelfq.request.v1``."""
    return kind.__struct_config__.tag  # type: ignore[return-value]


def encode(event: Event) -> bytes:
    """JSON bytes of an event, schema tag first."""
    return _ENCODER.encode(event)


def decode(data: bytes | None, kind: type[E], *, max_bytes: int = MAX_EVENT_BYTES) -> E:
    """Decode and validate one event of the given kind, or raise ``EventError``.

    The error names the field and the problem: missing, wrong type, out of range, too many
    entries, payload too large, non-finite number, unknown schema version, or another kind.
    """
    if data is None:
        raise EventError("", "missing", "value is empty (null)")
    if len(data) > max_bytes:
        raise EventError("", "too_large", f"payload is {len(data)} bytes, the limit is {max_bytes}")
    event = _parse(_DECODER, data)
    if not isinstance(event, kind):
        raise EventError(
            "schema", "wrong_kind", f"expected {schema_of(kind)!r}, got {schema_of(type(cast(Event, event)))!r}"
        )
    return event


_VIEW_DECODERS: dict[type, msgspec.json.Decoder] = {}
V = TypeVar("V", bound=msgspec.Struct)


def decode_view(data: bytes | None, view: type[V], *, max_bytes: int = MAX_EVENT_BYTES) -> V:
    """Decode only the fields a reader uses, into ``view``: a plain Struct tagged like the
    event (``tag_field="schema"``) that declares a subset of its fields with the same types.

    Everything the view declares is validated as ``decode`` would, with the same errors;
    fields it leaves out are skipped unparsed (DESIGN: unknown fields are ignored). A hot
    consumer (the learner) reads big events this way at a fraction of the cost.
    """
    if data is None:
        raise EventError("", "missing", "value is empty (null)")
    if len(data) > max_bytes:
        raise EventError("", "too_large", f"payload is {len(data)} bytes, the limit is {max_bytes}")
    decoder = _VIEW_DECODERS.get(view)
    if decoder is None:
        decoder = _VIEW_DECODERS[view] = msgspec.json.Decoder(view)
    return cast(V, _parse(decoder, data))


def _parse(decoder: msgspec.json.Decoder, data: bytes) -> object:
    """Run one decoder; whatever the bytes, the result is a value or an ``EventError``.

    msgspec skips fields an event does not declare by recursing into them, and stops with
    ``RecursionError`` at the interpreter's limit (about 1,000 levels); events nest 4 deep, so a
    message that deep is hostile or broken. Catching it costs nothing per message, where a
    depth scan before decoding would cost ten times the learner's decode.
    """
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _event_error(str(exc), data) from None
    except msgspec.DecodeError as exc:
        raise _malformed(str(exc), data) from None
    except RecursionError:
        raise EventError("", "malformed", "malformed JSON: nested too deeply") from None


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_POST_INIT = re.compile(r"^(?P<field>[\w\[\]\.]+): (?P<kind>\w+): (?P<problem>.*)$", re.DOTALL)
_KNOWN_SCHEMAS = ", ".join(schema_of(k) for k in EVENT_TYPES)


def _event_error(message: str, data: bytes) -> EventError:
    """Turn msgspec's message into an EventError with the field, a kind and a problem."""
    m = _AT.match(message)
    assert m is not None  # the pattern matches any string
    msg, path = m["msg"], (m["path"] or "").lstrip(".")
    if pi := _POST_INIT.match(msg):  # raised by one of our __post_init__ checks
        field = f"{path}.{pi['field']}" if path else pi["field"]
        return EventError(field, pi["kind"], pi["problem"])
    if missing := re.match(r"Object missing required field `([^`]+)`", msg):
        field = f"{path}.{missing[1]}" if path else missing[1]
        return EventError(field, "missing", "required field is missing")
    if path == "schema" and msg.startswith("Invalid value"):
        return EventError(path, "unknown_schema", f"{msg[len('Invalid value '):]} is not one of {_KNOWN_SCHEMAS}")
    if msg == "Number out of range":
        return EventError(path, "non_finite", "number is too large to be finite")
    if "of length <=" in msg and msg.startswith("Expected `array`"):
        return EventError(path, "too_many", f"too many entries: {_lower(msg)}")
    if re.search(r"[<>]=? ?-?\d", msg):
        return EventError(path, "out_of_range", f"out of range: {_lower(msg)}")
    if msg.startswith("Expected"):
        return EventError(path, "wrong_type", f"wrong type: {_lower(msg)}")
    return EventError(path, "invalid", _lower(msg))


def _malformed(message: str, data: bytes) -> EventError:
    problem = "malformed JSON: " + _lower(message.removeprefix("JSON is malformed: "))
    # Python's json writes NaN/Infinity for non-finite floats; they are not JSON, so msgspec
    # stops there. Find the field that holds one so the error can name it.
    try:
        path = _non_finite_path(json.loads(data))
    except (ValueError, RecursionError):  # not JSON to Python either, or too deep to walk
        return EventError("", "malformed", problem)
    if path is not None:  # Python's json keeps lone surrogates, which UTF-8 cannot carry to dlq
        path = path.encode("utf-8", "backslashreplace").decode("utf-8")
        return EventError(path, "non_finite", "must be a finite number, got NaN or Infinity")
    return EventError("", "malformed", problem)


def _non_finite_path(doc: object, path: str = "") -> str | None:
    if isinstance(doc, float) and not math.isfinite(doc):
        return path
    children = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, child in children:
        sub = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        found = _non_finite_path(child, sub.lstrip("."))
        if found is not None:
            return found
    return None


def _lower(msg: str) -> str:
    """Lower-case the first letter for use mid-sentence, but not an acronym's (JSON)."""
    return msg if msg[1:2].isupper() else msg[:1].lower() + msg[1:]
