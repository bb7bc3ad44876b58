"""The ``models`` topic contract: safetensors bytes as the value, metadata in headers.

The value is never unpickled: ``read_safetensors_index`` parses only the safetensors header
(an 8-byte length and a JSON table of tensor names, dtypes, shapes and byte ranges) and checks
that it describes the buffer exactly. Loading tensors into a network is the learner's job.

>>> meta = ModelHeaders(policy="dqn", version=3, created_ts=1700000000.5, config={"gamma": 0.9})
>>> ModelHeaders.from_headers(meta.to_headers()) == meta
True
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple

import msgspec

from shelfq.contracts.errors import EventError
from shelfq.contracts.events import MAX_TS

HEADER_KEYS = ("policy", "version", "created_ts", "config")
# safetensors dtypes and their sizes in bytes
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_U64_MAX = 2**64 - 1  # safetensors sizes are usize


class ModelHeaders(NamedTuple):
    """Metadata of one model version, carried in the Kafka message headers."""

    policy: str
    version: int
    created_ts: float
    config: dict[str, Any]

    def to_headers(self) -> list[tuple[str, bytes]]:
        return [
            ("policy", self.policy.encode()),
            ("version", str(self.version).encode()),
            ("created_ts", repr(float(self.created_ts)).encode()),
            ("config", json.dumps(self.config, sort_keys=True).encode()),
        ]

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes | None]] | None) -> ModelHeaders:
        """Parse and validate message headers, or raise ``EventError`` naming the header.

        Whatever the header values hold (any bytes), the answer is headers or an EventError:

        >>> good = dict(ModelHeaders("dqn", 1, 1.0, {}).to_headers())
        >>> ModelHeaders.from_headers(list({**good, "config": b'{"a":' + b"[" * 5000}.items()))
        Traceback (most recent call last):
        ...
        shelfq.contracts.errors.EventError: headers.config: not a JSON object: nested too deeply
        """
        try:
            found = {k: v for k, v in (headers or []) if k in HEADER_KEYS and v is not None}
        except (TypeError, ValueError):  # not (key, value) pairs
            raise EventError("headers", "malformed", "headers are not (key, value) pairs") from None
        for key in HEADER_KEYS:
            if found.get(key) is None:
                raise EventError(f"headers.{key}", "missing", "required model header is missing")
        try:
            policy, version, created_ts = (bytes(found[k]).decode() for k in ("policy", "version", "created_ts"))
        except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise EventError("headers", "wrong_type", f"unreadable model header: {exc}") from None
        if not policy:
            raise EventError("headers.policy", "invalid", "must not be empty")
        # int() would take "1_000", " 7 " or other scripts' digits; a version is ASCII digits.
        if not _VERSION.fullmatch(version):
            raise EventError("headers.version", "wrong_type", f"not an integer: {version[:40]!r}")
        if not 0 <= int(version) <= _MAX_VERSION:
            raise EventError("headers.version", "out_of_range", f"must be 0..{_MAX_VERSION}, got {version}")
        try:
            ts = float(created_ts)
        except ValueError:
            raise EventError("headers.created_ts", "wrong_type", f"not a number: {created_ts[:40]!r}") from None
        if not math.isfinite(ts):
            raise EventError("headers.created_ts", "non_finite", f"must be a finite time, got {created_ts[:40]}")
        if not 0 <= ts <= MAX_TS:
            raise EventError("headers.created_ts", "out_of_range", f"must be epoch seconds 0..{MAX_TS:.0f}, got {ts}")
        try:  # msgspec, not json: it refuses NaN, lone surrogates and invalid UTF-8 as JSON does
            config = _CONFIG.decode(found["config"])
        except msgspec.ValidationError:
            raise EventError("headers.config", "wrong_type", "must be a JSON object") from None
        except (msgspec.DecodeError, TypeError) as exc:
            raise EventError("headers.config", "malformed", f"not a JSON object: {_lower(str(exc))}") from None
        except RecursionError:
            raise EventError("headers.config", "malformed", "not a JSON object: nested too deeply") from None
        return cls(policy, int(version), ts, config)


_MAX_VERSION = 2**63 - 1
_VERSION = re.compile(r"-?[0-9]{1,19}")  # int64 has at most 19 digits; its range is checked
_CONFIG = msgspec.json.Decoder(dict[str, Any])


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class _TensorSpec(msgspec.Struct):
    dtype: str
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    data_offsets: tuple[int, int]


# msgspec, not json: a header is refused, not half-read, when it is not UTF-8, holds lone
# surrogates or NaN, or nests past the interpreter's recursion limit (RecursionError).
_TABLE = msgspec.json.Decoder(dict[str, msgspec.Raw])
_SPEC = msgspec.json.Decoder(_TensorSpec)
_METADATA = msgspec.json.Decoder(dict[str, str])


def read_safetensors_index(value: bytes | None) -> dict[str, TensorInfo]:
    """The tensor table of a safetensors buffer, checked against the buffer; no data is read.

    The checks are safetensors' own: every entry names a known dtype, a shape and the byte
    range that holds exactly that many elements; the ranges lie inside the data, do not
    overlap and cover it all (so a buffer that passes loads, and nothing is read twice).
    Whatever the bytes, the answer is the table or an ``EventError``.

    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> read_safetensors_index(struct.pack("<Q", len(header)) + header + bytes(8))
    {'w': TensorInfo(dtype='F32', shape=(2,), start=0, end=8)}
    >>> twice = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    ...                     "b": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
    ...                     "c": {"dtype": "F64", "shape": [1], "data_offsets": [8, 16]}}).encode()
    >>> read_safetensors_index(struct.pack("<Q", len(twice)) + twice + bytes(16))
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.EventError: value.b: data offsets 0..8 overlap another tensor's
    """
    if not value or len(value) < 8:
        raise EventError("value", "malformed", "not safetensors: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", value[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(value):
        raise EventError("value", "malformed", f"not safetensors: header length {n} exceeds the buffer")
    header = value[8 : 8 + n]
    try:
        table = _TABLE.decode(header)
        if "__metadata__" in table:
            _METADATA.decode(table["__metadata__"])
    except msgspec.ValidationError as exc:
        raise EventError("value", "malformed", f"not safetensors: header is not a JSON object of tensors ({_lower(str(exc))})") from None
    except (msgspec.DecodeError, RecursionError):
        raise EventError("value", "malformed", "not safetensors: header is not JSON") from None
    data_len = len(value) - 8 - n
    index: dict[str, TensorInfo] = {}
    for name, raw in table.items():
        if name == "__metadata__":
            continue
        try:
            spec = _SPEC.decode(raw)
        except msgspec.ValidationError as exc:
            if str(exc).startswith("Object missing required field"):
                raise EventError(f"value.{name}", "malformed", "tensor entry lacks dtype, shape or data_offsets") from None
            raise EventError(f"value.{name}", "invalid", f"bad tensor entry: {_lower(str(exc))}") from None
        except (msgspec.DecodeError, RecursionError):  # skipped unparsed above: invalid UTF-8, say
            raise EventError(f"value.{name}", "malformed", "tensor entry is not JSON") from None
        dtype, shape, (start, end) = spec.dtype, tuple(spec.shape), spec.data_offsets
        if dtype not in DTYPE_BYTES:
            raise EventError(f"value.{name}", "invalid", f"unknown dtype {dtype!r}")
        if not 0 <= start <= end <= data_len:
            raise EventError(f"value.{name}", "out_of_range", f"data offsets {start}..{end} outside the {data_len}-byte buffer")
        if not _fits_usize(shape, DTYPE_BYTES[dtype]):
            raise EventError(f"value.{name}", "invalid", f"shape {list(shape)} overflows a 64-bit size")
        if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise EventError(f"value.{name}", "invalid", f"{end - start} bytes do not hold {dtype}{list(shape)}")
        index[name] = TensorInfo(dtype, shape, start, end)
    reached = 0
    for name, info in sorted(index.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start < reached:
            raise EventError(f"value.{name}", "invalid", f"data offsets {info.start}..{info.end} overlap another tensor's")
        reached = info.end
    covered = sum(info.end - info.start for info in index.values())
    if covered != data_len:
        raise EventError("value", "malformed", f"tensors cover {covered} of {data_len} data bytes")
    return index


def _fits_usize(shape: tuple[int, ...], itemsize: int) -> bool:
    """Whether safetensors reads ``shape`` and computes its size without overflow: each
    dimension is a 64-bit size, multiplied in order, then by the bits per element, all in 64
    bits (so ``[2**63, 2**63, 0]`` overflows where ``[0, 2**63, 2**63]`` does not).

    >>> _fits_usize((2**62, 0, 8), 4), _fits_usize((2**63, 2**63, 0), 4), _fits_usize((2**61,), 4)
    (True, False, False)
    """
    n = 1
    for d in shape:
        n *= d
        if d > _U64_MAX or n > _U64_MAX:
            return False
    return n * itemsize * 8 <= _U64_MAX
