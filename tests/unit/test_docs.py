"""docs/events.md shows every event kind, and each example is the valid one in contracts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from shelfq.contracts.events import EVENT_TYPES, decode, schema_of
from shelfq.contracts.examples import EXAMPLES

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_every_event_kind_is_documented_with_its_example() -> None:
    blocks = re.findall(r"Key `([^`]+)`:\n\n```json\n(.*?)\n```", DOC.read_text(), re.DOTALL)
    by_schema = {json.loads(body)["schema"]: (key, body) for key, body in blocks}
    assert set(by_schema) == {schema_of(k) for k in EVENT_TYPES}
    for key, event in EXAMPLES.values():
        doc_key, body = by_schema[schema_of(type(event))]
        assert doc_key == key
        assert decode(body.encode(), type(event)) == event
