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
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from contracts.errors import EventError

HEADER_KEYS = ("policy", "version", "created_ts", "config")
# safetensors dtypes and their sizes in bytes
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 << 20


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
        """Parse and validate message headers, or raise ``EventError`` naming the header."""
        found = {k: v for k, v in (headers or []) if k in HEADER_KEYS}
        for key in HEADER_KEYS:
            if found.get(key) is None:
                raise EventError(f"headers.{key}", "missing", "required model header is missing")
        try:
            policy = found["policy"].decode()
            version = int(found["version"])
            created_ts = float(found["created_ts"])
            config = json.loads(found["config"])
        except (UnicodeDecodeError, ValueError) as exc:
            raise EventError("headers", "wrong_type", f"unreadable model header: {exc}") from None
        if not policy:
            raise EventError("headers.policy", "invalid", "must not be empty")
        if version < 0:
            raise EventError("headers.version", "out_of_range", f"must be >= 0, got {version}")
        if not math.isfinite(created_ts) or created_ts < 0:
            raise EventError("headers.created_ts", "non_finite", f"must be a finite time, got {created_ts}")
        if not isinstance(config, dict):
            raise EventError("headers.config", "wrong_type", "must be a JSON object")
        return cls(policy, version, created_ts, config)


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_index(value: bytes | None) -> dict[str, TensorInfo]:
    """The tensor table of a safetensors buffer, checked against the buffer; no data is read.

    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> read_safetensors_index(struct.pack("<Q", len(header)) + header + bytes(8))
    {'w': TensorInfo(dtype='F32', shape=(2,), start=0, end=8)}
    """
    if not value or len(value) < 8:
        raise EventError("value", "malformed", "not safetensors: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", value[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(value):
        raise EventError("value", "malformed", f"not safetensors: header length {n} exceeds the buffer")
    try:
        table = json.loads(value[8 : 8 + n])
    except (UnicodeDecodeError, ValueError):
        raise EventError("value", "malformed", "not safetensors: header is not JSON") from None
    if not isinstance(table, dict):
        raise EventError("value", "malformed", "not safetensors: header is not a JSON object")
    data_len = len(value) - 8 - n
    index: dict[str, TensorInfo] = {}
    covered = 0
    for name, spec in table.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise EventError(f"value.{name}", "malformed", "tensor entry lacks dtype, shape or data_offsets") from None
        if dtype not in DTYPE_BYTES:
            raise EventError(f"value.{name}", "invalid", f"unknown dtype {dtype!r}")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise EventError(f"value.{name}", "invalid", f"bad shape {list(shape)}")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len):
            raise EventError(f"value.{name}", "out_of_range", f"data offsets {start}..{end} outside the {data_len}-byte buffer")
        if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise EventError(f"value.{name}", "invalid", f"{end - start} bytes do not hold {dtype}{list(shape)}")
        covered += end - start
        index[name] = TensorInfo(dtype, shape, start, end)
    if covered != data_len:
        raise EventError("value", "malformed", f"tensors cover {covered} of {data_len} data bytes")
    return index
