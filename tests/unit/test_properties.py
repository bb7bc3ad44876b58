"""Properties of every decoder, over inputs nobody would write by hand (issue 14).

- Totality: whatever the bytes, a decoder gives a value or ``EventError`` (``ShelfqError`` for
  checkpoints): arbitrary bytes, and valid events with one part made hostile (nesting past
  the recursion limit, 400-digit integers, +-1e308, NaN, lone surrogates, invalid UTF-8,
  duplicate keys, huge strings, too many entries).
- What validates can be encoded again and decodes to itself; generated valid events of every
  kind round-trip.
- Downstream: a decoded request, state or transition goes through the featurizer without an
  exception and gives finite float32 and in-range rows (the replay buffer's columns).

The examples come from the hypothesis profile in tests/conftest.py (derandomized, a few
hundred in all); ``--hypothesis-profile=long`` searches much further.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import safetensors
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shelfq.contracts.dlq import dead_letter
from shelfq.contracts.errors import EventError, ShelfqError
from shelfq.contracts.events import (
    EVENT_TYPES,
    FLOAT32_MAX,
    INT64_MAX,
    MAX_CANDIDATES,
    MAX_CONTEXT_NUMBER,
    MAX_EVENT_BYTES,
    MAX_MONEY,
    MAX_REWARD,
    MAX_TS,
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
    decode,
    encode,
)
from shelfq.contracts.examples import EXAMPLES
from shelfq.contracts.models import DTYPE_BYTES, HEADER_KEYS, ModelHeaders, read_safetensors_index
from shelfq.learner.artifact import LoadedModel, load_model, model_message
from shelfq.learner.checkpoint import Checkpoint, load_checkpoint, load_optimizer, save_checkpoint
from shelfq.learner.config import LearnerConfig
from shelfq.learner.features import LINK_FIELDS, Featurizer
from shelfq.learner.network import QNetwork
from shelfq.learner.wire import decode_transition


def scaled(share: float) -> settings:
    """This test's share of the profile's examples (the profile is loaded before collection,
    so ``--hypothesis-profile=long`` scales every test)."""
    return settings(max_examples=max(5, int(settings().max_examples * share)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- hostile JSON ----------------------------------------------------------------------------


class Tok(bytes):
    """JSON text written verbatim: what no serializer would write (NaN, lone surrogates, ...)."""


class Pairs(list):
    """A JSON object as (key, value) pairs, so a key can appear twice."""


def dump(doc: Any) -> bytes:
    """JSON bytes of ``doc``; ``Tok`` verbatim, ``Pairs`` with their duplicate keys, and str
    with lone surrogates escaped as ``\\udxxx`` (Python's json does that, msgspec does not)."""
    if isinstance(doc, Tok):
        return bytes(doc)
    if isinstance(doc, (dict, Pairs)):
        items = doc.items() if isinstance(doc, dict) else doc
        return b"{" + b",".join(dump(str(k)) + b":" + dump(v) for k, v in items) + b"}"
    if isinstance(doc, (list, tuple)):
        return b"[" + b",".join(dump(v) for v in doc) + b"]"
    return json.dumps(doc).encode()  # NaN/Infinity for non-finite floats: not JSON, on purpose


DEEP = [
    Tok(b"[" * 3000 + b"]" * 3000),
    Tok(b'{"a":' * 3000 + b"1" + b"}" * 3000),
    Tok(b"[" * 950 + b"NaN" + b"]" * 950),  # past msgspec's limit, within Python json's
    Tok(b"[" * 500 + b"]" * 500),  # deep but within every limit
    Tok(b"[" * 100_000),
]
TOKENS = [
    Tok(b"NaN"), Tok(b"Infinity"), Tok(b"-Infinity"), Tok(b"1e400"), Tok(b"-1e400"), Tok(b"1e-400"),
    Tok(b"9" * 400), Tok(b"-" + b"9" * 30), Tok(b'"\\ud800"'), Tok(b'"x\\udfff"'), Tok(b'"\\ud800\\u0041"'),
    Tok(b'"\xed\xa0\x80"'), Tok(b'"\xff\xfe"'), Tok(b'"\\u0000"'), Tok(b'"\x01"'), Tok(b"tru"), Tok(b"01"), Tok(b""),
]
hostile_numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([2**53 + 1, 2**63, 2**64, -(2**63) - 1, MAX_CONTEXT_NUMBER + 1, -1, 0]),
    st.floats(),  # NaN, +-inf, +-1.8e308, subnormals
    st.sampled_from([1e308, -1e308, 3.5e38, -3.5e38, 1e300, 5e-324, -0.0, 1e16, MAX_REWARD * 2,
                     MAX_MONEY * 2, MAX_TS * 2, 1.7e12]),
)
hostile_strings = st.one_of(
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),  # lone surrogates
    st.text(max_size=5),
    st.sampled_from([257, 1_001, 300_000, 1_100_000]).map(lambda n: "x" * n),  # over an id, a title, the message
)
hostile_leaves = st.one_of(
    hostile_numbers, hostile_strings, st.sampled_from(DEEP), st.sampled_from(TOKENS), st.booleans(), st.none(),
    st.sampled_from([[], {}, [1, "a"], {"a": [None]}]),
    st.sampled_from([101, MAX_CANDIDATES + 1]).map(lambda n: [f"i{k}" for k in range(n)]),  # too many entries
)


def paths(doc: Any, here: tuple = ()) -> list[tuple]:
    """Every place in a JSON tree: object keys and list indices, the root included."""
    found = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += paths(v, (*here, i))
    return found


def replace(doc: Any, path: tuple, fn: Any) -> Any:
    if not path:
        return fn(doc)
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: replace(v, rest, fn) if k == head else v for k, v in doc.items()}
    return [replace(v, rest, fn) if i == head else v for i, v in enumerate(doc)]


@st.composite
def hostile_events(draw: st.DrawFn) -> tuple[type[Event], bytes]:
    """A valid example with one place made hostile: a value replaced, an unknown field added,
    or a key repeated with another value."""
    _key, event = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
    doc = msgspec.to_builtins(event)
    path = draw(st.sampled_from(paths(doc)))
    leaf = draw(hostile_leaves)
    how = draw(st.sampled_from(["replace", "add", "repeat"]))
    if how == "replace" and path:
        doc = replace(doc, path, lambda _old: leaf)
    else:
        def extend(node: Any) -> Any:
            if not isinstance(node, dict):
                return leaf
            if how == "add" or not node:
                return Pairs([*node.items(), ("x_unknown", leaf)])
            key = draw(st.sampled_from(sorted(node)))  # the same key again, after or before
            first = draw(st.booleans())
            return Pairs([(key, leaf), *node.items()] if first else [*node.items(), (key, leaf)])
        doc = replace(doc, path, extend)
    return type(event), dump(doc)


JSON_HEADS = [b"", b'{"schema":"shelfq.request.v1",', b'{"schema":"shelfq.transition.v1","reward":', b"[", b'{"a":']
any_bytes = st.one_of(st.binary(max_size=300), st.tuples(st.sampled_from(JSON_HEADS), st.binary(max_size=200)).map(b"".join))


# -- what a decoded value must allow downstream ---------------------------------------------------

FEATURIZER = Featurizer(hash_buckets=64, history_length=5, context_buckets=16, slate_width=4)


def check_rows(arrays: dict[str, np.ndarray] | tuple[np.ndarray, ...]) -> None:
    if isinstance(arrays, dict):  # the session-link columns: 63-bit keys and impression times
        links = [arrays.pop(name) for name in LINK_FIELDS]
        assert all(k.dtype == np.int64 and (k >= 0).all() for k in links[:2]) and np.isfinite(links[2]).all()
    for a in (arrays.values() if isinstance(arrays, dict) else arrays):
        if a.dtype.kind == "f":
            assert a.dtype == np.float32 and np.isfinite(a).all()
        elif a.dtype.kind in "iu":
            assert a.size == 0 or (a.min() >= 0 and a.max() < 100)  # rows, event ids, positions


def check_downstream(event: Event) -> None:
    """What the agent and the learner do with a decoded event goes through without an error."""
    if isinstance(event, Request):  # the agent's state for a request (agents.service)
        check_rows(FEATURIZER.states([State(context=dict(event.context or {}))]))
    elif isinstance(event, (Slate, Impression)) and event.state is not None:
        check_rows(FEATURIZER.states([event.state]))
    elif isinstance(event, UserState):
        check_rows(FEATURIZER.states([State(history=event.history)]))
    elif isinstance(event, Transition):
        check_rows(FEATURIZER.states([event.state, event.next_state]))
        check_rows(FEATURIZER.rows([event]))
        view = decode_transition(encode(event))  # the learner's fast decoder takes it too
        assert (view.reward, view.position, view.action) == (event.reward, event.position, event.action)
        check_rows(FEATURIZER.rows([view]))


def check_round_trip(event: Event, kind: type[Event]) -> None:
    data = encode(event)  # a decoded str never holds a lone surrogate, so this cannot fail
    assert decode(data, kind) == event


# -- decoders are total ---------------------------------------------------------------------------


def decoded_or_refused(fn: Any, *args: Any, error: type[Exception] = EventError) -> Any:
    """``fn(*args)``, or None when it refused with ``error``; any other exception fails.
    (``--hypothesis-show-statistics`` counts the outcomes: both must occur.)"""
    try:
        value = fn(*args)
    except error as exc:
        event(f"{fn.__name__}: refused ({getattr(exc, 'kind', 'error')})")
        return None
    event(f"{fn.__name__}: accepted")
    return value


@scaled(1.0)
@given(data=any_bytes)
def test_every_decoder_is_total_over_arbitrary_bytes(data: bytes) -> None:
    for kind in EVENT_TYPES:
        event = decoded_or_refused(decode, data, kind)
        if event is not None:
            check_round_trip(event, kind)
    decoded_or_refused(decode_transition, data)
    decoded_or_refused(read_safetensors_index, data)
    decoded_or_refused(ModelHeaders.from_headers, [(k, data) for k in HEADER_KEYS])


@scaled(3.0)
@given(case=hostile_events())
def test_decoders_are_total_over_hostile_json(case: tuple[type[Event], bytes]) -> None:
    kind, data = case
    event = decoded_or_refused(decode, data, kind)
    if event is not None:
        check_round_trip(event, kind)
        check_downstream(event)
    if kind is Transition:
        view = decoded_or_refused(decode_transition, data)
        if event is not None:  # what the full decoder takes, the learner's view takes
            assert view is not None and (view.reward, view.action) == (event.reward, event.action)
        if view is not None:  # with the same bounds on what it reads
            assert abs(view.reward) <= MAX_REWARD
            check_rows(FEATURIZER.rows([view]))


def test_the_reported_messages_are_refused_with_an_event_error() -> None:
    request = b'{"schema":"shelfq.request.v1","request_id":"r1","user_id":"u1","ts":1.0'
    transition = encode(EXAMPLES["transitions"][1])
    cases = [
        (request + b',"ignored":' + b"[" * 2000 + b"]" * 2000 + b"}", Request, "malformed"),
        (request + b',"context":{"n":' + b"9" * 400 + b"}}", Request, "out_of_range"),
        (transition.replace(b'"reward":8.0', b'"reward":1e300'), Transition, "out_of_range"),
        (request.replace(b'"ts":1.0', b'"ts":1.7e12') + b"}", Request, "out_of_range"),  # milliseconds
        (request + b',"session_id":"\\ud800"}', Request, "malformed"),
    ]
    for data, kind, code in cases:
        with pytest.raises(EventError) as info:
            decode(data, kind)
        assert info.value.kind == code, data[:80]
    with pytest.raises(EventError, match="reward: out of range"):
        decode_transition(transition.replace(b'"reward":8.0', b'"reward":1e300'))
    with pytest.raises(EventError, match="nested too deeply"):
        decode_transition(transition[:-1] + b',"ignored":' + b"[" * 2000 + b"]" * 2000 + b"}")


def test_a_context_number_beyond_float_is_clipped_by_the_featurizer() -> None:
    # Validation refuses it on the wire; a State built in Python still must not crash.
    _rows, weights = FEATURIZER.context(State(context={"n": 10**400, "m": -(10**400), "f": float("nan")}))
    assert np.isfinite(weights).all() and sorted(weights[:3].tolist()) == [-10.0, 10.0, 10.0]


# -- valid events round-trip ----------------------------------------------------------------------

ids = st.text(min_size=1, max_size=8)
opt_ids = st.none() | ids
ts = st.floats(min_value=0, max_value=MAX_TS)
counts = st.integers(min_value=0, max_value=INT64_MAX)
contexts = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.one_of(st.text(max_size=6), st.integers(-MAX_CONTEXT_NUMBER, MAX_CONTEXT_NUMBER),
              st.floats(-MAX_CONTEXT_NUMBER, MAX_CONTEXT_NUMBER)),
    max_size=10,
)
interactions = st.builds(Interaction, item_id=ids, event=st.sampled_from(["click", "add_to_cart", "purchase"]), ts=ts)
histories = st.lists(interactions, max_size=7)
states = st.builds(State, history=histories, context=contexts)
item_lists = st.lists(ids, min_size=1, max_size=6, unique=True)
probabilities = st.floats(0, 1)


def aligned(items: list[str], values: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(values, min_size=len(items), max_size=len(items))


@st.composite
def slates(draw: st.DrawFn) -> Slate:
    items = draw(item_lists)
    return Slate(request_id=draw(ids), user_id=draw(ids), session_id=draw(ids), ts=draw(ts), items=items,
                 scores=draw(aligned(items, st.floats(-FLOAT32_MAX, FLOAT32_MAX))),
                 propensities=draw(aligned(items, probabilities)), policy=draw(ids),
                 model_version=draw(st.none() | counts), state=draw(states))


@st.composite
def impressions(draw: st.DrawFn) -> Impression:
    items = draw(item_lists)
    return Impression(request_id=draw(ids), user_id=draw(ids), session_id=draw(ids), ts=draw(ts), items=items,
                      state=draw(st.none() | states), propensities=draw(st.none() | aligned(items, probabilities)),
                      policy=draw(opt_ids), model_version=draw(st.none() | counts))


@st.composite
def feedbacks(draw: st.DrawFn) -> Feedback:
    event = draw(st.sampled_from(["click", "add_to_cart", "purchase", "exit"]))
    return Feedback(request_id=draw(ids), user_id=draw(ids), session_id=draw(ids), ts=draw(ts), event=event,
                    item_id=None if event == "exit" else draw(ids), value=draw(st.none() | st.floats(0, MAX_MONEY)))


@st.composite
def transitions(draw: st.DrawFn) -> Transition:
    slate = draw(item_lists)
    position = draw(st.integers(0, len(slate) - 1))
    request_id = draw(ids)
    return Transition(
        transition_id=f"{request_id}:{position}", request_id=request_id, user_id=draw(ids), session_id=draw(ids),
        state=draw(states), action=slate[position], position=position, slate=slate,
        reward=draw(st.floats(-MAX_REWARD, MAX_REWARD)), reward_parts=draw(st.dictionaries(ids, counts, max_size=3)),
        next_state=draw(states), done=draw(st.booleans()), ts_impression=draw(ts), ts_emitted=draw(ts),
        propensity=draw(st.none() | probabilities), policy=draw(opt_ids), model_version=draw(st.none() | counts),
    )


GENERATORS: dict[type[Event], st.SearchStrategy] = {
    Request: st.builds(Request, request_id=ids, user_id=ids, ts=ts, session_id=opt_ids, slate_size=st.integers(1, 100),
                       candidates=st.none() | st.lists(ids, max_size=6, unique=True),
                       context=st.none() | contexts),
    Slate: slates(),
    Impression: impressions(),
    Feedback: feedbacks(),
    Item: st.builds(Item, item_id=ids, ts=ts, title=st.none() | st.text(max_size=30), category=opt_ids,
                    price=st.none() | st.floats(0, MAX_MONEY)),
    Transition: transitions(),
    UserState: st.builds(UserState, user_id=ids, history=histories, ts=ts),
    DeadLetter: st.builds(
        DeadLetter, component=ids, reason=ids, topic=st.text(max_size=10), ts=ts, detail=st.text(max_size=20),
        partition=st.none() | st.integers(-(2**63), INT64_MAX), offset=st.none() | st.integers(-(2**63), INT64_MAX),
        key=st.none() | st.text(max_size=8), value=st.none() | st.text(max_size=20),
        value_encoding=st.sampled_from(["utf-8", "base64"]), value_bytes=counts, truncated=st.booleans()),
}
valid_events = st.one_of(*GENERATORS.values())


def test_every_kind_of_event_has_a_generator() -> None:
    assert set(GENERATORS) == set(EVENT_TYPES)


@scaled(2.0)
@given(event=valid_events)
def test_valid_events_round_trip_and_featurize(event: Event) -> None:
    data = encode(event)
    assert len(data) <= MAX_EVENT_BYTES
    assert decode(data, type(event)) == event
    check_downstream(event)


@scaled(1.0)
@given(value=st.none() | st.binary(max_size=200), key=st.none() | st.binary(max_size=20) | st.text(max_size=8),
       detail=st.text(max_size=30), topic=st.text(max_size=10), limit=st.integers(0, 64))
def test_every_dead_letter_encodes_and_round_trips(value: bytes | None, key: Any, detail: str, topic: str,
                                                    limit: int) -> None:
    # text() draws lone surrogates too: an error message quoting Python-parsed JSON can hold one
    record = dead_letter("agent", "invalid", topic, value, key=key, detail=detail, max_value_bytes=limit, ts=1.0)
    assert decode(encode(record), DeadLetter) == record
    assert record.value_bytes == (0 if value is None else len(value))


# -- model messages -------------------------------------------------------------------------------

header_values = st.one_of(
    st.none(), st.binary(max_size=40), st.sampled_from([b"dqn", b"7", b"-1", b"1_000", b" 7", b"\xd9\xa1",
                                                         b"9" * 30, b"1e400", b"nan", b"1767225600.5", b"{}"]),
    hostile_leaves.map(dump), st.dictionaries(st.text(max_size=4), hostile_leaves, max_size=2).map(dump),
)


@scaled(1.0)
@given(headers=st.lists(st.tuples(st.sampled_from([*HEADER_KEYS, "other"]), header_values), max_size=6),
       base=st.booleans())
def test_model_headers_are_total_and_round_trip(headers: list[tuple[str, bytes | None]], base: bool) -> None:
    if base:  # valid headers, some replaced: every check is reached
        headers = ModelHeaders("dqn", 3, 1.0, {"gamma": 0.9}).to_headers() + headers
    meta = decoded_or_refused(ModelHeaders.from_headers, headers)
    if meta is not None:
        assert 0 <= meta.version <= INT64_MAX and 0 <= meta.created_ts <= MAX_TS
        assert ModelHeaders.from_headers(meta.to_headers()) == meta


@st.composite
def safetensors_buffers(draw: st.DrawFn) -> bytes:
    """A tensor table laid out as the format says, then perhaps broken: offsets moved (overlap,
    holes, past the end, negative), dtypes and shapes of the wrong kind, extra keys, a header
    of another JSON type or nested deep, a wrong header length."""
    table: dict[str, Any] = {}
    offset = 0
    for name in draw(st.lists(st.text(max_size=4), max_size=4, unique=True)):
        dtype = draw(st.sampled_from(sorted(DTYPE_BYTES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = int(np.prod(shape)) * DTYPE_BYTES[dtype]
        table[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        table["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
    data = draw(st.binary(min_size=offset, max_size=offset))
    doc: Any = table
    for _ in range(draw(st.integers(0, 2))):  # break it, perhaps more than once
        target = draw(st.sampled_from(paths(doc)))
        doc = replace(doc, target, lambda _old: draw(hostile_leaves | st.integers(-8, offset + 8)))
    header = dump(doc)
    if draw(st.booleans()):
        header += b" " * draw(st.integers(0, 7))  # padding, as the format allows
    n = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1, 2**40]))
    return struct.pack("<Q", max(0, n)) + header + data + bytes(draw(st.sampled_from([0, 0, 1, 8])))


@scaled(2.0)
@given(value=safetensors_buffers())
@example(value=b'4\x00\x00\x00\x00\x00\x00\x00{"":{"dtype":"\xed\xa0\x80","shape":[],"data_offsets":[0,2]}}\x00\x00')
def test_safetensors_index_is_total_and_agrees_with_safetensors(value: bytes) -> None:
    index = decoded_or_refused(read_safetensors_index, value)
    if index is None:
        return
    # What the index accepts, safetensors itself loads, with the same tensors: nothing
    # overlaps, nothing is left over, every range holds its shape.
    loaded = dict(safetensors.deserialize(value))
    assert {n: (t["dtype"], tuple(t["shape"]), len(t["data"])) for n, t in loaded.items()} == {
        n: (i.dtype, i.shape, i.end - i.start) for n, i in index.items()}
    spans = sorted((i.start, i.end) for i in index.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


TINY = LearnerConfig(hash_buckets=8, context_buckets=4, embedding_dim=2, hidden_dim=2, history_length=3)
_VALUE, _HEADERS = model_message(QNetwork(TINY), TINY, version=1, created_ts=1.0)
config_changes = st.dictionaries(
    st.sampled_from(["hash_buckets", "context_buckets", "embedding_dim", "hidden_dim", "content_dim", "encoder",
                     "history_length", "objective", "position_bias"]),
    st.one_of(hostile_numbers, st.sampled_from([0, 1, 2, 8, 10**12, True, "gru", "lstm", "cnn", "slateq", None, [1]])),
    max_size=2,
)


@scaled(0.5)
@given(changes=config_changes, flips=st.lists(st.tuples(st.integers(0, len(_VALUE) - 1), st.integers(1, 255)), max_size=3),
       cut=st.sampled_from([None, None, 8, len(_VALUE) - 4, len(_VALUE) + 4]))
def test_load_model_is_total(changes: dict[str, Any], flips: list[tuple[int, int]], cut: int | None) -> None:
    value = bytearray(_VALUE)
    for at, xor in flips:
        value[at] ^= xor
    value = bytes(value)[:cut] + (bytes(4) if cut and cut > len(_VALUE) else b"")
    config = dump({**_HEADERS.config, **changes})
    headers = [(k, config if k == "config" else v) for k, v in _HEADERS.to_headers()]
    model = decoded_or_refused(load_model, value, headers)
    if model is not None:
        assert isinstance(model, LoadedModel)
        assert all(torch.isfinite(p).all() for p in model.network.parameters())


def test_load_model_refuses_a_config_of_a_trillion_rows_without_allocating_it() -> None:
    headers = [(k, dump({**_HEADERS.config, "hash_buckets": 10**12}) if k == "config" else v)
               for k, v in _HEADERS.to_headers()]
    with pytest.raises(EventError, match="tensors do not match the network"):
        load_model(_VALUE, headers)


# -- checkpoints ------------------------------------------------------------------------------------

files = st.one_of(st.binary(max_size=64), hostile_leaves.map(dump), st.just(b'{"step": 1}'), st.just(b"[1]"))


@scaled(0.5)
@given(broken=st.sampled_from([None, "LATEST", "state.json", "tensors.safetensors", "arrays.safetensors"]),
       content=files, truncate=st.booleans())
def test_load_checkpoint_is_total(broken: str | None, content: bytes, truncate: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
        optimizer.step()
        path = save_checkpoint(root, {"w": torch.ones(2)}, {"buf": np.arange(3)},
                               {"step": 1, "optimizer": {"param_groups": optimizer.state_dict()["param_groups"]}})
        if broken is not None:
            target = root / broken if broken == "LATEST" else path / broken
            target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2] if truncate else content)
        ck = decoded_or_refused(load_checkpoint, root, error=ShelfqError)
        if ck is not None:
            assert isinstance(ck, Checkpoint) and isinstance(ck.state, dict)
            meta = ck.state.get("optimizer")
            fresh = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
            decoded_or_refused(load_optimizer, fresh, ck.tensors, meta if isinstance(meta, dict) else {},
                               error=ShelfqError)
