"""The dead-letter record and the model message contract, without Kafka."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from shelfq.contracts.dlq import dead_letter
from shelfq.contracts.errors import EventError
from shelfq.contracts.events import DeadLetter, decode, encode
from shelfq.contracts.examples import example_model
from shelfq.contracts.models import ModelHeaders, read_safetensors_index


def test_dead_letter_keeps_origin_reason_and_text_value() -> None:
    dl = dead_letter("streams", "late", "shelfq.feedback", b'{"a": 1}', key=b"u-1", partition=3, offset=99,
                     detail="feedback 40s after its window closed", ts=5.0)
    assert (dl.component, dl.reason, dl.topic, dl.partition, dl.offset, dl.key) == (
        "streams", "late", "shelfq.feedback", 3, 99, "u-1")
    assert (dl.value, dl.value_encoding, dl.value_bytes, dl.truncated) == ('{"a": 1}', "utf-8", 8, False)
    assert decode(encode(dl), DeadLetter) == dl


def test_dead_letter_truncates_long_values() -> None:
    dl = dead_letter("agent", "invalid", "t", b"x" * 1000, max_value_bytes=100)
    assert (len(dl.value), dl.value_bytes, dl.truncated) == (100, 1000, True)


def test_dead_letter_cut_inside_a_character_stays_text() -> None:
    dl = dead_letter("agent", "invalid", "t", "é".encode() * 60, max_value_bytes=101)
    assert dl.value_encoding == "utf-8" and dl.truncated and set(dl.value) == {"é"}


def test_binary_values_are_base64() -> None:
    dl = dead_letter("agent", "invalid", "t", b"\x00\xff\xfe")
    assert dl.value_encoding == "base64" and base64.b64decode(dl.value) == b"\x00\xff\xfe"


def test_null_value_is_recorded_as_null() -> None:
    dl = dead_letter("agent", "invalid", "t", None)
    assert (dl.value, dl.value_bytes) == (None, 0)


def test_model_headers_round_trip_and_validate() -> None:
    _value, meta = example_model()
    assert ModelHeaders.from_headers(meta.to_headers()) == meta
    headers = dict(meta.to_headers())
    for key, bad, kind in [("version", b"-1", "out_of_range"), ("created_ts", b"nan", "non_finite"),
                           ("config", b"[1]", "wrong_type"), ("version", b"v3", "wrong_type")]:
        with pytest.raises(EventError) as info:
            ModelHeaders.from_headers(list({**headers, key: bad}.items()))
        assert info.value.kind == kind, key
    with pytest.raises(EventError, match="headers.policy"):
        ModelHeaders.from_headers([(k, v) for k, v in headers.items() if k != "policy"])


def _safetensors(table: dict, data: bytes) -> bytes:
    header = json.dumps(table).encode()
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize(
    "value,problem",
    [
        (b"", "shorter than"),
        (b"\xff" * 16, "exceeds the buffer"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (_safetensors({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)), "lacks dtype"),
        (_safetensors({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "unknown dtype"),
        (_safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)), "do not hold"),
        (_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)), "outside"),
        (_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12)), "cover 8 of 12"),
    ],
)
def test_corrupt_safetensors_is_rejected_with_a_reason(value: bytes, problem: str) -> None:
    with pytest.raises(EventError, match=problem):
        read_safetensors_index(value)


def test_example_model_is_valid_safetensors() -> None:
    value, _meta = example_model()
    assert read_safetensors_index(value)["q.weight"].shape == (2, 2)
