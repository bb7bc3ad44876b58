"""The slates x impressions x feedback join, as pure code: events and a watermark in,
transitions and dead letters out. No Kafka, no Faust, no clocks of its own.

One ``Record`` per request_id gathers the slate (decision log), the impression (what was shown)
and the feedback on it. An item's attribution window opens at the impression and closes
``window_s`` later in event time; its transition is emitted when the partition's watermark
passes the close, or early on a purchase of that item or the session's exit. An exit names one
request, but ends its whole session: every open item of the session's impressions up to the
exit closes with it (``done`` only on the named request's, the session's last impression).

Records live in a mapping the caller provides (a Faust table's store in production), so the
caller persists exactly the keys in ``Output.writes``. Emission is two-phase for at-least-once
delivery: ``Output.transitions`` are marked in flight, and only ``acked()`` (called once the
broker has them) records them as emitted in the persisted record. A crash in between re-emits
with the same ``transition_id``; nothing is lost.

``process_batch`` applies a batch of events at one wall time: exactly what ``process`` would
give for each, one after the other, for less work per event (see its docstring).

>>> from shelfq.contracts.examples import EXAMPLES, T0
>>> join = Join(JoinConfig(window_s=10))
>>> _ = join.process(0, "slates", EXAMPLES["slates"][1], now=T0)
>>> _ = join.process(0, "impressions", EXAMPLES["impressions"][1], now=T0)
>>> out = join.process(0, "feedback", EXAMPLES["feedback"][1], now=T0 + 5)
>>> [(t.action, t.reward, t.reward_parts) for t in out.transitions]   # the purchase closes early
[('sku-3', 5.0, {'purchase': 1})]
>>> again = Join(JoinConfig(window_s=10))
>>> outs = again.process_batch([(0, topic, EXAMPLES[topic][1]) for topic in INPUTS], now=T0 + 5)
>>> [o.transitions for o in outs] == [[], [], out.transitions]
True
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec
from msgspec.structs import replace

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import (DEFAULT_HISTORY_LENGTH, DEFAULT_REWARD_WEIGHTS, Event, Feedback, Impression, Interaction, Slate,
                             State, Transition)

SLATES, IMPRESSIONS, FEEDBACK = "slates", "impressions", "feedback"
INPUTS = (SLATES, IMPRESSIONS, FEEDBACK)
Session = tuple[str, str]  # (user_id, session_id)
RESTORED = "restored"  # the event time a partition's restored records had reached
DEFAULT_WEIGHTS = DEFAULT_REWARD_WEIGHTS


@dataclass(frozen=True)
class JoinConfig:
    """Settings of the join (SHELFQ_JOIN_* in the worker)."""

    window_s: float = 1800.0
    """Attribution window: feedback up to this many seconds after the impression counts."""
    allowed_lateness_s: float = 10.0
    """The watermark trails the newest event time by this much, so slightly out-of-order
    events still land in their window."""
    idle_advance_s: float = 5.0
    """A partition without events for this long advances its watermark with the wall clock,
    so a quiet shop still gets its transitions."""
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    """Reward weight of each feedback kind; reward = sum over deduplicated feedback."""
    history_length: int = DEFAULT_HISTORY_LENGTH
    """Interactions kept in a next_state and in user-state."""
    max_future_skew_s: float = 300.0
    """Events stamped further than this ahead of the worker's clock are dead letters (reason
    ``future``): a producer with a wrong clock (or milliseconds for seconds) must neither close
    every window at once nor pin a record for ever."""

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.allowed_lateness_s < 0 or self.idle_advance_s <= 0:
            raise ConfigError("join: window_s and idle_advance_s must be > 0, allowed_lateness_s >= 0")
        if self.history_length < 1:
            raise ConfigError("join: history_length must be >= 1")
        unknown = set(self.weights) - {"click", "add_to_cart", "purchase"}
        if unknown or not all(math.isfinite(w) for w in self.weights.values()):
            raise ConfigError(f"join: weights are finite numbers for click, add_to_cart, purchase; got {dict(self.weights)}")


class Record(msgspec.Struct, array_like=True):
    """Everything known about one request_id; persisted in the join table."""

    request_id: str
    partition: int
    slate: Slate | None = None
    impression: Impression | None = None
    feedback: list[Feedback] = []
    """Accepted feedback, deduplicated by (item, kind); held until the impression is joined."""
    emitted: list[int] = []
    """Positions whose transitions the broker has acknowledged."""
    closed_at: float | None = None
    """Event time when every item was emitted; the record then only marks late feedback."""
    session_exit_ts: float | None = None
    """Event time of the exit of another request of the same session that closed this record's
    open items (done False). On a closed marker: the exit that closed it, its own or another
    request's, kept with ``exited_session`` so that a restarted join still knows the session
    ended. Trailing fields with defaults: records stored before them still decode."""
    exited_session: Session | None = None
    """On a closed marker that an exit closed: (user_id, session_id) of that exit."""

    def state(self) -> State | None:
        """The state the policy saw: inline on the impression if it came so, else the slate's."""
        if self.impression is not None and self.impression.state is not None:
            return self.impression.state
        return self.slate.state if self.slate is not None else None

    def joined(self) -> bool:
        return self.impression is not None and self.state() is not None


class DeadLetterOut(NamedTuple):
    reason: str
    detail: str
    topic: str
    event: Event


@dataclass(slots=True, init=False)
class Output:
    """What one step produced."""

    transitions: list[Transition]
    dead_letters: list[DeadLetterOut]
    writes: dict[str, tuple[int, Record | None]]
    """Keys to persist: request_id -> (partition, record, or None to delete)."""
    attributed: list[Feedback]
    """Feedback counted towards a transition (once each): what user histories record."""

    def __init__(self) -> None:  # one per event and per ack: literals cost less than default factories
        self.transitions, self.dead_letters, self.writes, self.attributed = [], [], {}, []


class Join:
    """The join state machine over any number of partitions."""

    def __init__(self, config: JoinConfig = JoinConfig(), records: MutableMapping[str, Record] | None = None) -> None:
        self.config = config
        self.records: MutableMapping[str, Record] = {} if records is None else records
        self._deadlines: dict[int, list[tuple[float, str]]] = {}
        self._watermark: dict[int, float] = {}
        # partition -> input topic -> (newest event time, wall time it arrived)
        self._seen: dict[int, dict[str, tuple[float, float]]] = {}
        self._first_seen: dict[int, float] = {}
        self._backlog: dict[int, frozenset[str]] = {}
        self._inflight: dict[str, set[int]] = {}
        # partition -> session -> request_ids of its joined records not closed yet, so an exit
        # finds the rest of its session without a scan
        self._sessions: dict[int, dict[Session, set[str]]] = {}
        # partition -> session -> event times of its exits, for records of the session that join
        # after its exit arrived (topics are not ordered with each other); each one is forgotten
        # a window after its exit, when any impression before it has closed on its own.
        self._exits: dict[int, dict[Session, list[float]]] = {}
        self._exit_expiry: dict[int, list[tuple[float, Session, float]]] = {}
        self._now = 0.0  # wall time of the step in progress
        self.inputs: Counter[str] = Counter()
        self.outcomes: Counter[tuple[str, str]] = Counter()

    # -- inputs ------------------------------------------------------------------------------

    def process(self, partition: int, topic: str, event: Event, now: float) -> Output:
        """Apply one valid event of ``topic`` from ``partition`` at wall time ``now``."""
        self._now = now
        out = Output()
        if self._apply(partition, topic, event, now, out):
            self._advance(partition, topic, event.ts, now, out)  # type: ignore[attr-defined]
        return out

    def process_batch(self, events: Iterable[tuple[int, str, Event]], now: float) -> list[Output]:
        """Apply valid ``(partition, topic, event)`` in order at wall time ``now``: output ``i``
        is exactly what ``process`` would return for event ``i`` called one event after the
        other at ``now`` (the same transitions, dead letters, writes and attributed feedback,
        in the same order), and the join is left in the same state.

        It costs less per event: what a partition's watermark depends on besides event times
        (which inputs are idle or still unread at ``now``, fixed for the batch) is worked out
        once per partition per batch, or again when an input turns active, and each event only
        updates a running minimum and looks at the tops of two heaps. The watermark still
        moves at every event, not at the end of the batch: feedback the watermark has passed
        when it arrives is late whether or not it comes in the same batch as what moved it."""
        self._now = now
        outputs: list[Output] = []
        # partition -> (the inputs that hold its watermark, in the order of _seen, or None
        # while an input not read yet may still be behind the others)
        holding: dict[int, tuple[str, ...] | None] = {}
        lateness = self.config.allowed_lateness_s
        watermarks, deadlines, exit_expiry = self._watermark, self._deadlines, self._exit_expiry
        for partition, topic, event in events:
            out = Output()
            outputs.append(out)
            if not self._apply(partition, topic, event, now, out):
                continue
            seen = self._note(partition, topic, event.ts, now)  # type: ignore[attr-defined]
            active = holding.get(partition, ())
            if active is None or topic not in active:  # the first event of the partition, or an input woke up
                active = holding[partition] = self._holding(partition, now)
                if active is None:
                    continue
            low = None
            for t in active:  # min() without a list: the first of the lowest, as min() gives
                ts = seen[t][0]
                if low is None or ts < low:
                    low = ts
            mark = low - lateness  # type: ignore[operator]
            # As _close, without its loops when nothing is due.
            wm = watermarks.get(partition, -math.inf)
            if mark >= wm:
                watermarks[partition] = wm = mark
            heap, expiry = deadlines.get(partition), exit_expiry.get(partition)
            if (heap and heap[0][0] <= wm) or (expiry and expiry[0][0] <= wm):
                self._settle(partition, wm, out)
        return outputs

    def _apply(self, partition: int, topic: str, event: Event, now: float, out: Output) -> bool:
        """``process`` up to the watermark: False for an event the watermark must not see."""
        self.inputs[topic] += 1
        if event.ts > now + self.config.max_future_skew_s:  # type: ignore[attr-defined]
            # A clock far ahead (or milliseconds for seconds) would pin the record for ever.
            self._dead(out, "future", f"event time {event.ts} is more than {self.config.max_future_skew_s:g}s "  # type: ignore[attr-defined]
                       f"ahead of the worker's clock ({now:.0f})", event)
            return False
        records = self.records
        rec = records.get(event.request_id)  # type: ignore[attr-defined]
        if rec is None:
            rec = Record(request_id=event.request_id, partition=partition)  # type: ignore[attr-defined]
            records[rec.request_id] = rec
            before = None
        elif topic == FEEDBACK and rec.impression is not None and event.event != "exit":  # type: ignore[attr-defined]
            # Of the feedback, only an exit moves the deadline of a record that has its
            # impression (its close); other feedback is held, attributed or refused.
            self._on_feedback(rec, event, out, now)  # type: ignore[arg-type]
            return True
        else:
            before = self._deadline(rec)
        if topic == SLATES:
            self._on_slate(rec, event, out)  # type: ignore[arg-type]
        elif topic == IMPRESSIONS:
            self._on_impression(rec, event, out)  # type: ignore[arg-type]
        elif topic == FEEDBACK:
            self._on_feedback(rec, event, out, now)  # type: ignore[arg-type]
        else:
            raise ValueError(f"the join reads slates, impressions and feedback, not {topic!r}")
        if rec.request_id in records:
            after = self._deadline(rec)
            if after != before and after is not None:
                heapq.heappush(self._deadlines.setdefault(rec.partition, []), (after, rec.request_id))
        return True

    def tick(self, partition: int, now: float) -> Output:
        """Wall-clock progress: inputs idle for ``idle_advance_s`` stop holding the watermark
        back, and a partition whose inputs are all idle moves it with the wall clock."""
        self._now = now
        out = Output()
        mark = self._mark(partition, now)
        if mark is not None:
            self._close(partition, mark, now, out)
        return out

    def watermark(self, partition: int) -> float | None:
        """The event time up to which ``partition``'s windows have closed (None before its first)."""
        return self._watermark.get(partition)

    def note_backlog(self, partition: int, topics: set[str]) -> None:
        """Which inputs of ``partition`` have unread messages (the caller's consumer knows). An
        input with a backlog never counts as idle, however long it has been since its last
        event: the consumer is reading other topics first, and its events are still to come."""
        self._backlog[partition] = frozenset(topics)

    def acked(self, transition: Transition) -> Output:
        """The broker has ``transition``: record it as emitted (persist ``writes``)."""
        out = Output()
        request_id, position = transition.request_id, transition.position
        rec = self.records.get(request_id)
        inflight = self._inflight.get(request_id)
        if rec is None or inflight is None or position not in inflight:
            return out  # a partition revoked since, or a repeat: nothing to record
        inflight.discard(position)
        if not inflight:
            del self._inflight[request_id]
        emitted = rec.emitted
        emitted.append(position)
        assert rec.impression is not None
        if len(emitted) == len(rec.impression.items):
            # Every item is out: keep only a marker, so feedback still to come counts as late,
            # and the session's exit, if one closed it, so that a restart still knows it.
            session = _session(rec)
            self._unindex(rec, session)
            exit_close = self._exit_close(rec)
            rec.closed_at = self._watermark.get(rec.partition, transition.ts_impression)
            if exit_close is not None:
                rec.session_exit_ts, rec.exited_session = exit_close[0], session
            rec.slate, rec.impression, rec.feedback = None, None, []
            self._schedule(rec)
        out.writes[rec.request_id] = (rec.partition, rec)
        return out

    def failed(self, transition: Transition) -> None:
        """The broker refused ``transition``: forget it was in flight and reschedule its record,
        so the next watermark step emits it again (same transition_id, same content)."""
        inflight = self._inflight.get(transition.request_id)
        if inflight is None or transition.position not in inflight:
            return
        inflight.discard(transition.position)
        if not inflight:
            del self._inflight[transition.request_id]
        rec = self.records.get(transition.request_id)
        if rec is not None:
            self._schedule(rec)

    # -- event handlers ----------------------------------------------------------------------

    def _on_slate(self, rec: Record, slate: Slate, out: Output) -> None:
        if rec.slate is not None or rec.closed_at is not None:
            self.outcomes[(SLATES, "duplicate")] += 1
            return
        rec.slate = slate
        out.writes[rec.request_id] = (rec.partition, rec)
        if rec.impression is not None:
            self.outcomes[(SLATES, "joined")] += 1
            if rec.impression.state is None:  # the impression was waiting for its slate
                self.outcomes[(IMPRESSIONS, "joined")] += 1
                self._joined(rec, out)

    def _on_impression(self, rec: Record, imp: Impression, out: Output) -> None:
        if rec.impression is not None or rec.closed_at is not None:
            self.outcomes[(IMPRESSIONS, "duplicate")] += 1
            return
        rec.impression = imp
        out.writes[rec.request_id] = (rec.partition, rec)
        if rec.slate is not None:
            self.outcomes[(SLATES, "joined")] += 1
        if rec.joined():
            self.outcomes[(IMPRESSIONS, "joined")] += 1
            self._joined(rec, out)

    def _on_feedback(self, rec: Record, fb: Feedback, out: Output, now: float) -> None:
        event, item = fb.event, fb.item_id
        for seen in rec.feedback:
            if seen.event == event and seen.item_id == item:
                self.outcomes[(FEEDBACK, "duplicate")] += 1
                return
        if rec.closed_at is not None:
            self._dead(out, "late", f"feedback on request {fb.request_id}, whose every item was already emitted", fb)
            return
        rec.feedback.append(fb)
        out.writes[rec.request_id] = (rec.partition, rec)
        if rec.joined():
            self._attribute(rec, fb, out)  # otherwise held until the impression joins

    def _joined(self, rec: Record, out: Output) -> None:
        """The record just met its slate (or its state): index it by session, attribute the
        feedback it held in event-time order, and if its session's exit came after its
        impression but arrived before it joined, close it at that exit in its place among the
        held feedback (what comes after the exit is late, as for a record joined in time)."""
        imp = rec.impression
        assert imp is not None
        session = _session(rec)
        self._sessions.setdefault(rec.partition, {}).setdefault(session, set()).add(rec.request_id)
        exit_ts = self._remembered_exit(rec.partition, session, imp.ts)
        held, rec.feedback = rec.feedback, []
        for fb in sorted(held, key=lambda f: f.ts):
            if exit_ts is not None and fb.ts > exit_ts:
                self._close_at_session_exit(rec, exit_ts, out)
                exit_ts = None
            rec.feedback.append(fb)
            self._attribute(rec, fb, out)
        if exit_ts is not None:
            self._close_at_session_exit(rec, exit_ts, out)

    def _attribute(self, rec: Record, fb: Feedback, out: Output) -> None:
        """Classify one accepted feedback of a joined record; close early on purchase or exit."""
        imp = rec.impression
        assert imp is not None
        if fb.ts > imp.ts + self.config.window_s:
            rec.feedback.remove(fb)
            self._dead(out, "late", f"feedback at ts {fb.ts} is after its window closed at {imp.ts + self.config.window_s}", fb)
            return
        if fb.event == "exit":
            open_items = [] if rec.session_exit_ts is not None else self._open_items(rec)
            if not open_items:
                rec.feedback.remove(fb)
                self._dead(out, "late", f"exit on request {fb.request_id} after every item was closed", fb)
                return
            self.outcomes[(FEEDBACK, "attributed")] += 1
            out.attributed.append(fb)
            self._emit(rec, open_items, out)
            self._end_session(rec, fb.ts, out)
            return
        if fb.item_id not in imp.items:
            rec.feedback.remove(fb)
            self._dead(out, "orphan", f"item {fb.item_id!r} was not shown in impression {imp.request_id}", fb)
            return
        position = imp.items.index(fb.item_id)
        inflight = self._inflight.get(rec.request_id, ())
        if position in rec.emitted or position in inflight or self._exit_close(rec) is not None:
            # An exit closed every item; checked on the record too, because after a restart
            # nothing is in flight until the re-emission, which must not see this feedback.
            rec.feedback.remove(fb)
            self._dead(out, "late", f"feedback on {fb.item_id!r} after its item closed", fb)
            return
        self.outcomes[(FEEDBACK, "attributed")] += 1
        out.attributed.append(fb)
        if fb.event == "purchase":
            self._emit(rec, [position], out)

    # -- sessions ----------------------------------------------------------------------------

    def _end_session(self, rec: Record, exit_ts: float, out: Output) -> None:
        """``rec``'s exit was attributed: remember it for the session's records still to join,
        and close the open items of every other joined record of the session shown up to the
        exit. An impression after the exit belongs to what follows it and stays open."""
        session = _session(rec)
        self._remember_exit(rec.partition, session, exit_ts)
        for key in sorted(self._sessions.get(rec.partition, {}).get(session, ())):
            other = self.records.get(key)
            if key == rec.request_id or other is None or other.impression is None or other.impression.ts > exit_ts:
                continue
            self._close_at_session_exit(other, exit_ts, out)

    def _close_at_session_exit(self, rec: Record, exit_ts: float, out: Output) -> None:
        """Emit the open items of ``rec`` at its session's exit (done False), and persist what
        closed them, so a re-emission after a crash closes them the same way."""
        if self._exit_close(rec) is not None:
            return  # an exit closed it already
        open_items = self._open_items(rec)
        if not open_items:
            return
        rec.session_exit_ts = exit_ts
        out.writes[rec.request_id] = (rec.partition, rec)
        self._emit(rec, open_items, out)
        self._schedule(rec)  # due at the exit now: a re-emission need not wait for the window

    def _remember_exit(self, partition: int, session: Session, exit_ts: float) -> None:
        times = self._exits.setdefault(partition, {}).setdefault(session, [])
        if exit_ts not in times:
            bisect.insort(times, exit_ts)
            heapq.heappush(self._exit_expiry.setdefault(partition, []), (exit_ts + self.config.window_s, session, exit_ts))

    def _remembered_exit(self, partition: int, session: Session, impression_ts: float) -> float | None:
        """The session's first exit at or after ``impression_ts``, if one is remembered."""
        times = self._exits.get(partition, {}).get(session, [])
        i = bisect.bisect_left(times, impression_ts)
        return times[i] if i < len(times) else None

    def _forget_exits(self, partition: int, mark: float) -> None:
        expiry = self._exit_expiry.get(partition, [])
        while expiry and expiry[0][0] <= mark:
            _expiry, session, exit_ts = heapq.heappop(expiry)
            times = self._exits.get(partition, {}).get(session)
            if times is not None and exit_ts in times:
                times.remove(exit_ts)
                if not times:
                    del self._exits[partition][session]

    def _unindex(self, rec: Record, session: Session) -> None:
        keys = self._sessions.get(rec.partition, {}).get(session)
        if keys is not None:
            keys.discard(rec.request_id)
            if not keys:
                del self._sessions[rec.partition][session]

    def _open_items(self, rec: Record) -> list[int]:
        """Positions of a joined record neither acknowledged nor in flight."""
        assert rec.impression is not None
        inflight = self._inflight.get(rec.request_id, ())
        return [p for p in range(len(rec.impression.items)) if p not in rec.emitted and p not in inflight]

    def _exit_close(self, rec: Record) -> tuple[float, bool] | None:
        """When an exit closes a joined record's items, and whether it is the record's own exit
        (done True): its own exit or its session's, the earlier. Read from the record alone."""
        if not rec.feedback and rec.session_exit_ts is None:
            return None
        own = None
        for f in rec.feedback:  # the first of the earliest, as min() would
            if f.event == "exit" and (own is None or f.ts < own):
                own = f.ts
        session = rec.session_exit_ts
        if own is not None and (session is None or own <= session):
            return own, True
        return (session, False) if session is not None else None

    # -- time --------------------------------------------------------------------------------

    def _advance(self, partition: int, topic: str, ts: float, now: float, out: Output) -> None:
        self._note(partition, topic, ts, now)
        mark = self._mark(partition, now)
        if mark is not None:
            self._close(partition, mark, now, out)

    def _note(self, partition: int, topic: str, ts: float, now: float) -> dict[str, tuple[float, float]]:
        """``topic`` of ``partition`` sent an event stamped ``ts`` at wall time ``now``."""
        seen = self._seen.get(partition)
        if seen is None:
            seen = self._seen[partition] = {}
            self._first_seen[partition] = now
        newest = seen.get(topic)
        seen[topic] = (ts if newest is None or ts > newest[0] else newest[0], now)
        return seen

    def _holding(self, partition: int, now: float) -> tuple[str, ...] | None:
        """The inputs of a partition that has seen events whose newest event times hold its
        watermark back at ``now``, in the order of ``_seen`` (none: every input is idle), or
        None while an input not read yet may still be behind the others."""
        seen = self._seen[partition]
        idle = self.config.idle_advance_s
        backlog = self._backlog.get(partition, frozenset())
        for topic in INPUTS:
            if topic not in seen and (topic in backlog or now - self._first_seen[partition] < idle):
                return None
        # An input is idle when it sent nothing for a while *and* nothing of it waits unread.
        return tuple(topic for topic, (_ts, wall) in seen.items() if now - wall < idle or topic in backlog)

    def _mark(self, partition: int, now: float) -> float | None:
        """The partition's watermark candidate: the slowest active input's newest event time,
        less the allowed lateness. Topics are not read in step (a backlog on one must not make
        the others' events late), so the watermark follows the input that is furthest behind;
        an input idle for ``idle_advance_s`` stops holding it back, and when every input is
        idle, event time moves on with the wall clock."""
        seen = self._seen.get(partition)
        if not seen:
            return None
        active = self._holding(partition, now)
        if active is None:
            return None
        lateness = self.config.allowed_lateness_s
        if active:
            return min([seen[topic][0] for topic in active]) - lateness
        newest_wall = max(wall for _ts, wall in seen.values())
        return max(ts for ts, _wall in seen.values()) - lateness + (now - newest_wall)

    def _close(self, partition: int, mark: float, now: float, out: Output) -> None:
        """Move the watermark to ``mark`` and settle every record whose deadline passed."""
        wm = self._watermark.get(partition, -math.inf)
        if mark >= wm:
            self._watermark[partition] = wm = mark
        heap, expiry = self._deadlines.get(partition), self._exit_expiry.get(partition)
        if (heap and heap[0][0] <= wm) or (expiry and expiry[0][0] <= wm):
            self._settle(partition, wm, out)

    def _settle(self, partition: int, mark: float, out: Output) -> None:
        """Forget the exits and settle the records whose time passed at watermark ``mark``."""
        self._forget_exits(partition, mark)
        heap = self._deadlines.get(partition, [])
        while heap and heap[0][0] <= mark:
            _deadline, key = heapq.heappop(heap)
            rec = self.records.get(key)
            if rec is None:
                continue
            current = self._deadline(rec)
            if current is None:
                continue
            if current > mark:
                # Moved later since this entry was pushed: every change of a record's deadline
                # pushes the new one (_apply, _schedule), and a deadline past the watermark has
                # not been popped yet, so its own entry is still in the heap. Pushing it again
                # would only expire the record twice, the second time for nothing.
                continue
            self._expire(rec, out)

    def _deadline(self, rec: Record) -> float | None:
        w = self.config.window_s
        if rec.closed_at is not None:
            # A marker lasts as long as its session's exit is remembered, so a restart knows it.
            return max(rec.closed_at, rec.session_exit_ts if rec.session_exit_ts is not None else -math.inf) + w
        imp = rec.impression
        if imp is not None:
            joined = imp.state is not None or (rec.slate is not None and rec.slate.state is not None)
            exit_close = self._exit_close(rec) if joined else None
            # Every item of a record an exit closed is due by the exit (a purchase closes earlier).
            return imp.ts + w if exit_close is None else min(exit_close[0], imp.ts + w)
        if rec.slate is not None:
            return rec.slate.ts + w
        return min((f.ts for f in rec.feedback), default=0.0) + w

    def _schedule(self, rec: Record) -> None:
        deadline = self._deadline(rec)
        if deadline is not None:
            heapq.heappush(self._deadlines.setdefault(rec.partition, []), (deadline, rec.request_id))

    def _expire(self, rec: Record, out: Output) -> None:
        """A record's window closed: emit what is due, or dead-letter what never met."""
        if rec.joined():
            assert rec.impression is not None
            self._emit(rec, range(len(rec.impression.items)), out)
            return
        if rec.closed_at is None and rec.request_id in self._inflight:
            return  # waiting for acks
        if rec.closed_at is None:
            if rec.impression is not None:
                self._dead(out, "orphan", f"impression {rec.request_id} met no slate and carries no state", rec.impression)
            elif rec.slate is not None:
                self.outcomes[(SLATES, "unshown")] += 1
            for fb in rec.feedback:
                self._dead(out, "orphan", f"feedback on request {fb.request_id} met no impression", fb)
        del self.records[rec.request_id]
        out.writes[rec.request_id] = (rec.partition, None)

    # -- output ------------------------------------------------------------------------------

    def _emit(self, rec: Record, positions: range | list[int], out: Output) -> None:
        """Emit the transitions of ``positions`` not yet emitted.

        What a transition holds depends only on the record, never on when it is emitted, so a
        re-emission after a crash is identical: an item closes at its first purchase (done
        False), else at the exit that closed the record (done True if it is the record's own,
        False if another request's of its session, kept in ``session_exit_ts``), else at its
        window's end; its reward and next_state count the feedback up to that close, in event
        time."""
        imp, state = rec.impression, rec.state()
        assert imp is not None and state is not None
        inflight = self._inflight.setdefault(rec.request_id, set())
        emitted = rec.emitted
        due = [p for p in positions if p not in inflight and p not in emitted]
        if not due:
            return
        feedback = sorted(rec.feedback, key=_event_time)
        exit_close = self._exit_close(rec)
        exit_ts = exit_close[0] if exit_close is not None else None
        slate = rec.slate
        # Who chose the slate: an impression that carries its own state (a frontend's fallback,
        # a replayed log) speaks for itself, even if the agent's slate arrived as well (late).
        logged_by = slate if slate is not None and imp.state is None else imp
        # The experiment arm is the slate's; an impression that speaks for itself names none.
        arm = slate.arm if logged_by is slate else None
        # The feedback on items in event time: what an item's close counts is a prefix of it
        # (f.ts <= close), so its interactions are made once and next states shared by prefix.
        on_items = [f for f in feedback if f.item_id is not None]
        times = [f.ts for f in on_items]
        news: list[Interaction] | None = None  # made once some item's close counts feedback
        by_item: dict[str, list[Feedback]] = {}
        for f in on_items:
            by_item.setdefault(f.item_id, []).append(f)  # type: ignore[arg-type]
        weights, window_close = self.config.weights, imp.ts + self.config.window_s
        untouched = exit_close if exit_close is not None else (window_close, False)
        next_states: dict[int, State] = {}
        history, context, keep = state.history, state.context, self.config.history_length
        propensities = imp.propensities
        slate_items = slate.items if slate is not None and propensities is None else ()
        items, request_id, user_id, session_id = imp.items, rec.request_id, imp.user_id, imp.session_id
        policy, model_version, ts_impression, now = logged_by.policy, logged_by.model_version, imp.ts, self._now
        transitions = out.transitions
        first: Transition | None = None
        for position in due:
            item = items[position]
            mine = by_item.get(item)
            parts: dict[str, int] = {}
            if mine is None:  # no feedback on the item: it closes at the exit or the window's end
                close, done = untouched
                kinds = None
            else:
                purchase_ts = next((f.ts for f in mine if f.event == "purchase"), None)
                if purchase_ts is not None and (exit_ts is None or purchase_ts < exit_ts):
                    close, done = purchase_ts, False
                elif exit_close is not None:
                    close, done = exit_close
                else:
                    close, done = window_close, False
                kinds = [f.event for f in mine if f.ts <= close]
                for kind in kinds:  # as dict(Counter(kinds)): first-seen order
                    parts[kind] = parts.get(kind, 0) + 1
            seen = bisect.bisect_right(times, close) if times else 0
            next_state = next_states.get(seen)
            if next_state is None:
                if seen and news is None:
                    news = [Interaction(item_id=f.item_id, event=f.event, ts=f.ts) for f in on_items]  # type: ignore[arg-type]
                next_state = next_states[seen] = State(history=(list(history) + (news[:seen] if seen else []))[-keep:],  # type: ignore[index]
                                                       context=context)
            reward = float(sum(weights.get(k, 0.0) for k in kinds)) if kinds else 0.0
            propensity = (propensities[position] if propensities is not None else
                          slate.propensities[slate_items.index(item)] if item in slate_items else None)  # type: ignore[union-attr]
            if first is None:
                first = Transition(
                    transition_id=f"{request_id}:{position}",
                    request_id=request_id,
                    user_id=user_id,
                    session_id=session_id,
                    state=state,
                    action=item,
                    position=position,
                    slate=items,
                    reward=reward,
                    reward_parts=parts,
                    next_state=next_state,
                    done=done,
                    propensity=propensity,
                    policy=policy,
                    model_version=model_version,
                    arm=arm,
                    ts_impression=ts_impression,
                    ts_emitted=now,
                )
                transitions.append(first)
            else:  # the same but for what differs by item: half the cost, validated all the same
                transitions.append(replace(first, transition_id=f"{request_id}:{position}", action=item, position=position,
                                           reward=reward, reward_parts=parts, next_state=next_state, done=done,
                                           propensity=propensity))
            inflight.add(position)

    def _dead(self, out: Output, reason: str, detail: str, event: Event) -> None:
        topic = {Slate: SLATES, Impression: IMPRESSIONS, Feedback: FEEDBACK}[type(event)]
        self.outcomes[(topic, reason)] += 1
        out.dead_letters.append(DeadLetterOut(reason, detail, topic, event))

    # -- bookkeeping -------------------------------------------------------------------------

    def pending(self) -> Counter[str]:
        """Events consumed whose outcome is not decided yet, by topic (conservation:
        inputs == outcomes + pending, per topic)."""
        counts: Counter[str] = Counter()
        for rec in self.records.values():
            if rec.closed_at is not None:
                continue
            if rec.slate is not None and rec.impression is None:
                counts[SLATES] += 1
            if rec.impression is not None and not rec.joined():
                counts[IMPRESSIONS] += 1
            if not rec.joined():
                counts[FEEDBACK] += len(rec.feedback)
        return counts

    def pending_items(self) -> int:
        """Shown items whose transition is not yet acknowledged."""
        return sum(len(r.impression.items) - len(r.emitted) for r in self.records.values() if r.impression is not None)

    def rebuild(self, partitions: set[int], now: float, drop_others: bool = True) -> None:
        """After a rebalance or a restart: act for the records of ``partitions`` only,
        reschedule them, and start each partition's event time from its newest restored
        event, so a partition that stays quiet still closes the windows it restored. The
        records of other partitions are dropped, or with ``drop_others`` false kept in the
        mapping untouched (neither scheduled nor indexed) until the next rebuild decides.

        >>> from shelfq.contracts.examples import EXAMPLES, T0
        >>> join = Join(JoinConfig(window_s=10))
        >>> slate = EXAMPLES["slates"][1]
        >>> _ = join.process(1, "slates", slate, now=T0)
        >>> join.rebuild(set(), T0, drop_others=False)   # revoked: kept, nothing acts on it
        >>> slate.request_id in join.records, join.tick(1, T0 + 60).writes
        (True, {})
        >>> join.rebuild({1}, T0)                        # assigned again: its window passed
        >>> join.tick(1, T0 + 60).writes == {slate.request_id: (1, None)}
        True
        """
        if drop_others:
            for key in [k for k, r in self.records.items() if r.partition not in partitions]:
                del self.records[key]
        self._deadlines = {p: [] for p in partitions}
        self._inflight.clear()  # in-flight sends of a revoked owner are re-emitted by the new one
        for p in list(self._watermark):
            if p not in partitions:
                self._watermark.pop(p)
                self._seen.pop(p, None)
        self._sessions = {p: {} for p in partitions}
        self._exits = {p: {} for p in partitions}
        self._exit_expiry = {p: [] for p in partitions}
        newest: dict[int, float] = {}
        for rec in self.records.values():
            if rec.partition not in partitions:
                continue  # kept for a rebuild to come (drop_others false)
            self._schedule(rec)
            newest[rec.partition] = max(newest.get(rec.partition, -math.inf), _newest_ts(rec))
            if rec.closed_at is not None:
                if rec.session_exit_ts is not None and rec.exited_session is not None:
                    self._remember_exit(rec.partition, rec.exited_session, rec.session_exit_ts)
            elif rec.joined():
                session = _session(rec)
                self._sessions[rec.partition].setdefault(session, set()).add(rec.request_id)
                exit_close = self._exit_close(rec)
                if exit_close is not None:  # an exit on a joined record was attributed
                    self._remember_exit(rec.partition, session, exit_close[0])
        for p, ts in newest.items():
            if p not in self._seen:
                self._seen[p], self._first_seen[p] = {RESTORED: (ts, now)}, now


def _newest_ts(rec: Record) -> float:
    times = [f.ts for f in rec.feedback]
    for part in (rec.slate, rec.impression):
        if part is not None:
            times.append(part.ts)
    if rec.closed_at is not None:
        times.append(rec.closed_at)
    return max(times, default=-math.inf)


def _event_time(event: Feedback) -> float:
    return event.ts


def _session(rec: Record) -> Session:
    assert rec.impression is not None
    return rec.impression.user_id, rec.impression.session_id
