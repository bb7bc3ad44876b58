"""``shelfq replay``: feed a file of logged impressions and feedback into shelfq's topics.

Two formats (docs/replay.md): JSONL, one shelfq event per line exactly as on the topics
(impressions, feedback, catalog items), or CSV with a header and one row per event
(``CSV_COLUMNS``). The whole file is read and validated before anything is sent, so a bad file
is refused with precise errors (line and field) rather than half replayed; ``skip_bad`` sends the
valid events and counts the rest. Events then go out in event-time order (a stable sort: equal
``ts`` keep their file order), so the file need not be sorted, but it must fit in memory.

An impression without inline state gets one built from the user's earlier replayed feedback
(the last ``history_length`` clicks, add-to-carts and purchases): a replayed impression has no
slate to take its state from, and the join would hold it and dead-letter it as an orphan.

>>> rows = "kind,ts,request_id,user_id,session_id,items,item_id\\n" \\
...        "impression,10,r1,u1,s1,a|b,\\nclick,11,r1,u1,s1,,b\\nimpression,12,r2,u1,s1,c,\\n"
>>> parsed = parse_csv(rows)
>>> [e.state.history[0].item_id if e.state and e.state.history else None
...  for e in with_inline_state(parsed.events, 50) if isinstance(e, Impression)]
[None, 'b']
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from shelfq.contracts.errors import ConfigError, EventError, ShelfqError
from shelfq.contracts.events import (MAX_EVENT_BYTES, MAX_HISTORY, Event, Feedback, Impression, Interaction, Item, State,
                              decode, schema_of)
from shelfq.contracts.settings import Settings
from shelfq.frontend.client import ShopClient

CSV_COLUMNS = {
    "kind": "impression, click, add_to_cart, purchase or exit",
    "ts": "event time: epoch seconds, or ISO 8601 (UTC unless it names an offset)",
    "request_id": "the request an impression answered; feedback names its impression's",
    "user_id": "the shopper (the Kafka key)",
    "session_id": "the shopper's session",
    "items": "impressions: the item ids shown, in position order, separated by |",
    "propensities": "impressions, optional: per position, the chance the logging policy put that item there given the items above it, |-separated, aligned with items",
    "policy": "impressions, optional: the policy that chose the slate",
    "item_id": "click, add_to_cart, purchase: the item (empty for exit)",
    "value": "purchase, optional: the price",
}
REQUIRED_COLUMNS = ("kind", "ts", "request_id", "user_id", "session_id")
IMPRESSION_ONLY, FEEDBACK_ONLY = ("items", "propensities", "policy"), ("item_id", "value")
FEEDBACK_KINDS = ("click", "add_to_cart", "purchase", "exit")
MAX_ERRORS_SHOWN = 10
PROGRESS_EVERY_S = 10.0

CSV_HELP = "CSV columns (a header row names them; other columns are ignored; the first five are required):\n" + "\n".join(
    f"  {name:<13} {meaning}" for name, meaning in CSV_COLUMNS.items()) + """

JSONL: one shelfq event per line as on the topics (shelfq.impression.v1, shelfq.feedback.v1,
shelfq.item.v1). An impression without inline state gets one built from the user's earlier
feedback in the file (--history-length). The file is validated whole before anything is sent,
then sent in ts order. Details: docs/replay.md.

  shelfq replay clicks.csv --dry-run             # check the file, send nothing
  shelfq replay clicks.csv --rebase --speed 10   # stamped as of now, ten times faster than logged"""


@dataclass(frozen=True)
class BadLine:
    line: int
    field: str
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.problem}" if self.field else f"line {self.line}: {self.problem}"


@dataclass
class Parsed:
    events: list[Event] = field(default_factory=list)  # valid ones, in file order
    bad: list[BadLine] = field(default_factory=list)


class ReplayError(ShelfqError):
    """The file was refused; nothing was sent."""


# -- parsing ------------------------------------------------------------------------------------


def parse_jsonl(data: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Parsed:
    """Decode every non-blank line with the contracts' own decoder (same checks as consumers)."""
    out = Parsed()
    for n, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            event = decode(raw, Event, max_bytes=max_bytes)
        except EventError as exc:
            out.bad.append(BadLine(n, exc.field, exc.problem))
            continue
        if isinstance(event, (Impression, Feedback, Item)):
            out.events.append(event)
        else:
            out.bad.append(BadLine(n, "schema", f"replay sends impressions, feedback and items, not {schema_of(type(event))!r}"))
    return out


def parse_csv(text: str, max_bytes: int = MAX_EVENT_BYTES) -> Parsed:
    out = Parsed()
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    columns = reader.fieldnames or []
    if not columns:
        return out
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:  # every row would fail the same way: say it once
        out.bad.extend(BadLine(1, c, "column missing from the header") for c in missing)
        return out
    try:
        for row in reader:
            line = reader.line_num  # the row's last physical line (a quoted cell may span lines)
            if None in row:
                out.bad.append(BadLine(line, "", f"{len(row[None])} more values than the header has columns"))
                continue
            try:
                out.events.append(csv_event(row, max_bytes))
            except EventError as exc:
                out.bad.append(BadLine(line, "kind" if exc.field == "event" else exc.field, exc.problem))
    except csv.Error as exc:
        out.bad.append(BadLine(reader.line_num, "", f"not CSV: {exc}"))
    return out


def csv_event(row: dict[str, str | None], max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """One CSV row as an event, validated by ``contracts.events.decode`` like any other."""
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    for name in REQUIRED_COLUMNS:
        if not cell(name):
            raise EventError(name, "missing", "is empty")
    kind = cell("kind")
    doc: dict[str, Any] = {name: cell(name) for name in ("request_id", "user_id", "session_id")}
    doc["ts"] = _ts(cell("ts"))
    # A value in a column that does not apply to the row's kind is most likely a shifted
    # column; refusing it beats guessing.
    if kind == "impression":
        _require_empty(cell, FEEDBACK_ONLY, kind)
        if not cell("items"):
            raise EventError("items", "missing", "an impression lists the items it showed")
        doc["items"] = [i.strip() for i in cell("items").split("|")]
        if cell("propensities"):
            doc["propensities"] = [_number(f"propensities[{i}]", p) for i, p in enumerate(cell("propensities").split("|"))]
        if cell("policy"):
            doc["policy"] = cell("policy")
        return decode(json.dumps({"schema": schema_of(Impression), **doc}).encode(), Impression, max_bytes=max_bytes)
    if kind in FEEDBACK_KINDS:
        _require_empty(cell, IMPRESSION_ONLY, kind)
        doc["event"] = kind
        if cell("item_id"):
            doc["item_id"] = cell("item_id")
        if cell("value"):
            doc["value"] = _number("value", cell("value"))
        return decode(json.dumps({"schema": schema_of(Feedback), **doc}).encode(), Feedback, max_bytes=max_bytes)
    raise EventError("kind", "invalid", f"expected one of impression, {', '.join(FEEDBACK_KINDS)}; got {kind!r}")


def _require_empty(cell: Callable[[str], str], names: Sequence[str], kind: str) -> None:
    for name in names:
        if cell(name):
            raise EventError(name, "invalid", f"{kind} rows leave {name} empty, got {cell(name)!r}")


def _number(name: str, text: str) -> float:
    try:
        return float(text)  # NaN and inf pass here; decode names them as non-finite
    except ValueError:
        raise EventError(name, "wrong_type", f"expected a number, got {text!r}") from None


def _ts(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise EventError("ts", "wrong_type", f"expected epoch seconds or an ISO 8601 time, got {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


#: The formats of a log (``--format``); without one, the file's suffix says.
FORMATS = ("csv", "jsonl")


def read_file(source: str | Path, fmt: str | None = None, max_bytes: int = MAX_EVENT_BYTES) -> Parsed:
    """Parse ``source`` (a path, or ``-`` for stdin) as ``fmt``, or as its suffix says."""
    name = str(source)
    if fmt is None:
        suffix = Path(name).suffix.lower()
        fmt = "csv" if suffix == ".csv" else "jsonl" if suffix in (".jsonl", ".ndjson", ".json") else None
        if fmt is None:
            raise ConfigError(f"replay: cannot tell the format of {name!r} from its name; pass --format csv or --format jsonl")
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise ShelfqError(f"replay: cannot read {name}: {exc.strerror}") from None
    if fmt == "jsonl":
        return parse_jsonl(data, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Parsed(bad=[BadLine(data[:exc.start].count(b"\n") + 1, "", "not UTF-8 text")])
    return parse_csv(text, max_bytes)


# -- time and state -------------------------------------------------------------------------------


def schedule(ts: Sequence[float], speed: float) -> list[float]:
    """Seconds after the start at which each event (in ts order) is due: the original gaps
    divided by ``speed``; speed 0 sends everything at once."""
    if not ts or speed == 0:
        return [0.0] * len(ts)
    return [(t - ts[0]) / speed for t in ts]


def rebase_shift(first_ts: float, last_ts: float, speed: float, now: float) -> float:
    """What to add to every ts so the gaps are kept and no event is stamped later than the
    moment it is sent. The join dead-letters events stamped far ahead of its clock
    (``future``), so the first event is "now" only when the replay is no faster than real
    time; faster, the stamps end at "now" with the last event's send time instead (as fast as
    possible: the whole file lies in the seconds before the start)."""
    span = last_ts - first_ts
    ahead = span if speed == 0 else max(0.0, span - span / speed)  # how far the stamps outrun the clock
    return now - ahead - first_ts


def shifted(event: Event, shift: float) -> Event:
    """``event`` with its ts (and its inline history's) moved by ``shift`` seconds."""
    if shift == 0:
        return event
    if isinstance(event, Impression) and event.state is not None:
        history = [msgspec.structs.replace(i, ts=i.ts + shift) for i in event.state.history]
        event = msgspec.structs.replace(event, state=msgspec.structs.replace(event.state, history=history))
    return msgspec.structs.replace(event, ts=event.ts + shift)  # type: ignore[attr-defined]


def with_inline_state(events: Iterable[Event], history_length: int) -> Iterator[Event]:
    """Give each impression without state the user's last ``history_length`` interactions
    replayed before it (events in send order)."""
    histories: dict[str, deque[Interaction]] = defaultdict(lambda: deque(maxlen=history_length))
    for event in events:
        if isinstance(event, Feedback) and event.item_id is not None:  # an exit is no interaction
            histories[event.user_id].append(Interaction(item_id=event.item_id, event=event.event, ts=event.ts))  # type: ignore[arg-type]
        elif isinstance(event, Impression) and event.state is None:
            event = msgspec.structs.replace(event, state=State(history=list(histories[event.user_id])))
        yield event


def kind_of(event: Event) -> str:
    return "impression" if isinstance(event, Impression) else event.event if isinstance(event, Feedback) else "item"


# -- the replay ------------------------------------------------------------------------------------


@dataclass
class ReplaySummary:
    sent: Counter[str]
    skipped: int
    seconds: float
    shift_s: float
    feedback_without_impression: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.sent.values())
        return {"events": total, **{k: self.sent[k] for k in ("impression", *FEEDBACK_KINDS, "item")},
                "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "events_per_s": round(total / self.seconds, 1) if self.seconds > 0 else None,
                "rebase_shift_s": round(self.shift_s, 3), "feedback_without_impression": self.feedback_without_impression,
                "dry_run": self.dry_run}

    def lines(self) -> list[str]:
        d = self.as_dict()
        by_kind = ", ".join(f"{self.sent[k]} {k}" for k in ("impression", *FEEDBACK_KINDS, "item") if self.sent[k])
        verb = "would send (dry run)" if self.dry_run else "sent"
        out = [f"{verb} {d['events']} events: {by_kind or 'none'}"]
        if not self.dry_run:
            out.append(f"in {d['seconds']} s, {d['events_per_s']} events/s")
        if self.skipped:
            out.append(f"skipped {self.skipped} bad lines")
        if self.shift_s:
            out.append(f"rebased: every ts moved by {self.shift_s:+.3f} s")
        return out


def replay(settings: Settings, source: str | Path, *, fmt: str | None = None, speed: float = 0.0, rebase: bool = False,
           history_length: int = 50, skip_bad: bool = False, dry_run: bool = False,
           report: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
           client_factory: Callable[[Settings], Any] | None = None) -> ReplaySummary:
    """Validate ``source`` whole, then send its events in ts order with ``ShopClient``."""
    if not (math.isfinite(speed) and speed >= 0):
        raise ConfigError(f"replay: --speed must be 0 (as fast as possible) or a positive factor, got {speed}")
    if not 1 <= history_length <= MAX_HISTORY:
        raise ConfigError(f"replay: --history-length must be in 1..{MAX_HISTORY}, got {history_length}")
    parsed = read_file(source, fmt, settings.max_event_bytes)
    shown = "\n".join(f"  {b}" for b in parsed.bad[:MAX_ERRORS_SHOWN])
    more = f"\n  ... and {len(parsed.bad) - MAX_ERRORS_SHOWN} more" if len(parsed.bad) > MAX_ERRORS_SHOWN else ""
    if parsed.bad and not skip_bad:
        raise ReplayError(f"{source}: {len(parsed.bad)} bad lines; nothing was sent (fix them, or pass --skip-bad "
                          f"to send the valid events):\n{shown}{more}")
    if parsed.bad:
        report(f"skipping {len(parsed.bad)} bad lines:\n{shown}{more}")
    if not parsed.events and not parsed.bad:
        raise ReplayError(f"{source}: no events in the file")
    events = sorted(parsed.events, key=lambda e: e.ts)  # type: ignore[attr-defined]
    shown_requests = {e.request_id for e in events if isinstance(e, Impression)}
    unmatched = sum(1 for e in events if isinstance(e, Feedback) and e.request_id not in shown_requests)
    if unmatched:
        report(f"warning: {unmatched} feedback events name a request_id with no impression in the file; "
               "the join dead-letters them as orphans unless it got that impression some other way")
    ts = [e.ts for e in events]  # type: ignore[attr-defined]
    shift = rebase_shift(ts[0], ts[-1], speed, time.time()) if rebase and events else 0.0
    due = schedule(ts, speed)
    stream = with_inline_state((shifted(e, shift) for e in events), history_length)
    sent: Counter[str] = Counter()
    if dry_run:
        sent.update(kind_of(e) for e in stream)
        return ReplaySummary(sent, len(parsed.bad), 0.0, shift, unmatched, True)

    client = (client_factory or (lambda s: ShopClient(s, read_slates=False)))(settings)
    start = last_progress = time.monotonic()
    try:
        for event, at in zip(stream, due):
            # Sleep in delivery polls, so acks are served while a slow replay waits.
            while (wait := start + at - time.monotonic()) > 0:
                client.producer.poll(min(wait, 1.0))
            client.send(event)  # type: ignore[arg-type]  # with_inline_state passes on what parse() read: shop events
            sent[kind_of(event)] += 1
            if speed and time.monotonic() - last_progress > PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                report(f"sent {sum(sent.values())} of {len(events)} events")
        client.flush(60.0)  # raises if any delivery failed: never a silent loss
    except KeyboardInterrupt:
        client.flush(60.0)
        report(f"interrupted: {sum(sent.values())} of {len(events)} events sent")
        raise
    return ReplaySummary(sent, len(parsed.bad), time.monotonic() - start, shift, unmatched, False)
