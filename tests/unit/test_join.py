"""The pure join, table-driven: events in (in any order), transitions and dead letters out,
and every consumed event ends in exactly one outcome."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgspec
import pytest

from shelfq.contracts.events import Event, Feedback, Impression, Interaction, Slate, State, Transition
from shelfq.streams.join import Join, JoinConfig

WINDOW = 60.0
CONFIG = JoinConfig(window_s=WINDOW, allowed_lateness_s=0.0, idle_advance_s=1.0)
STATE = State(history=[Interaction(item_id="old", event="click", ts=1.0)], context={"page": "home"})


def slate(req: str = "r1", items=("a", "b", "c"), ts: float = 100.0, session: str = "s1") -> tuple[str, Event]:
    n = len(items)
    return "slates", Slate(request_id=req, user_id="u1", session_id=session, ts=ts, items=list(items),
                           scores=[float(n - i) for i in range(n)], propensities=[0.5] * n,
                           policy="dqn", model_version=3, state=STATE)


def imp(req: str = "r1", items=("a", "b", "c"), ts: float = 101.0, session: str = "s1", **inline) -> tuple[str, Event]:
    return "impressions", Impression(request_id=req, user_id="u1", session_id=session, ts=ts, items=list(items), **inline)


def fb(event: str, item: str | None = None, ts: float = 110.0, req: str = "r1", session: str = "s1") -> tuple[str, Event]:
    return "feedback", Feedback(request_id=req, user_id="u1", session_id=session, ts=ts, event=event, item_id=item)


def later(ts: float) -> list[tuple[str, Event]]:
    """An unrelated request whose slate, impression and feedback move the watermark to ``ts``
    (the watermark follows the input topic that is furthest behind)."""
    req = f"clock-{ts}"
    return [slate(req=req, items=("z",), ts=ts, session=req), imp(req=req, items=("z",), ts=ts, session=req),
            fb("click", "z", ts=ts, req=req, session=req)]


@dataclass
class Run:
    join: Join
    transitions: dict[str, Transition] = field(default_factory=dict)
    emitted_before_drain: set[str] = field(default_factory=set)
    dead: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, topic, request_id)


def run(events: list[tuple[str, Event]], drain: bool = True, wall: float | None = None) -> Run:
    """Feed the events (wall clock = event time, or ``wall`` for a backlog read all at once),
    ack every transition, then let wall time pass."""
    r = Run(Join(CONFIG))

    def take(out) -> None:
        for t in out.transitions:
            assert t.transition_id not in r.transitions, "emitted twice"
            r.transitions[t.transition_id] = t
            r.join.acked(t)
        r.dead += [(d.reason, d.topic, d.event.request_id) for d in out.dead_letters]

    for topic, event in events:
        take(r.join.process(0, topic, event, now=event.ts if wall is None else wall))
    r.emitted_before_drain = set(r.transitions)
    if drain:
        last = max(e.ts for _t, e in events) if wall is None else wall
        for step in range(1, 4):
            take(r.join.tick(0, now=last + step * 10 * WINDOW))
    return r


def assert_conservation(join: Join) -> None:
    pending = join.pending()
    for topic, count in join.inputs.items():
        settled = sum(n for (t, _o), n in join.outcomes.items() if t == topic)
        assert count == settled + pending[topic], (topic, join.inputs, join.outcomes, pending)


def clicks(r: Run) -> dict[str, tuple[float, dict, bool]]:
    return {t.action: (t.reward, t.reward_parts, t.done) for t in r.transitions.values() if not t.request_id.startswith("clock")}


CASES = {
    "in order": (
        [slate(), imp(), fb("click", "b")],
        {"a": (0.0, {}, False), "b": (1.0, {"click": 1}, False), "c": (0.0, {}, False)},
        [],
    ),
    "feedback before impression": (
        [fb("click", "b", ts=102), fb("add_to_cart", "b", ts=103), slate(), imp(ts=101)],
        {"a": (0.0, {}, False), "b": (3.0, {"click": 1, "add_to_cart": 1}, False), "c": (0.0, {}, False)},
        [],
    ),
    "impression before slate": (
        [imp(), fb("click", "c"), slate()],
        {"a": (0.0, {}, False), "b": (0.0, {}, False), "c": (1.0, {"click": 1}, False)},
        [],
    ),
    "duplicate click counts once": (
        [slate(), imp(), fb("click", "a"), fb("click", "a", ts=111)],
        {"a": (1.0, {"click": 1}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [],
    ),
    "late click": (
        [slate(), imp(), *later(101 + WINDOW + 1), fb("click", "a", ts=105)],
        {"a": (0.0, {}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [("late", "feedback", "r1")],
    ),
    "click after its window, before the close": (
        [slate(), imp(), fb("click", "a", ts=101 + WINDOW + 5)],
        {"a": (0.0, {}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [("late", "feedback", "r1")],
    ),
    "orphan click: no impression ever": (
        [fb("click", "a", req="ghost")],
        {},
        [("orphan", "feedback", "ghost")],
    ),
    "orphan click: item not shown": (
        [slate(), imp(), fb("click", "x")],
        {"a": (0.0, {}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [("orphan", "feedback", "r1")],
    ),
    "purchase closes early": (
        [slate(), imp(), fb("click", "b"), fb("purchase", "b", ts=112)],
        {"a": (0.0, {}, False), "b": (6.0, {"click": 1, "purchase": 1}, False), "c": (0.0, {}, False)},
        [],
    ),
    "exit marks done": (
        [slate(), imp(), fb("click", "a"), fb("exit", ts=115)],
        {"a": (1.0, {"click": 1}, True), "b": (0.0, {}, True), "c": (0.0, {}, True)},
        [],
    ),
    "no click gives 0": (
        [slate(), imp()],
        {"a": (0.0, {}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [],
    ),
    "several clicks in one slate": (
        [slate(), imp(), fb("click", "a"), fb("click", "c", ts=111), fb("add_to_cart", "c", ts=112)],
        {"a": (1.0, {"click": 1}, False), "b": (0.0, {}, False), "c": (3.0, {"click": 1, "add_to_cart": 1}, False)},
        [],
    ),
    "impression with inline state and no slate": (
        [imp(state=STATE, propensities=[0.9, 0.05, 0.05], policy="replay"), fb("click", "a")],
        {"a": (1.0, {"click": 1}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [],
    ),
    "impression with no slate and no state": (
        [imp(), fb("click", "a")],
        {},
        [("orphan", "impressions", "r1"), ("orphan", "feedback", "r1")],
    ),
    "slate never shown gives no transition": (
        [slate()],
        {},
        [],
    ),
    "repeated slate and impression": (
        [slate(), slate(), imp(), imp(), fb("click", "a")],
        {"a": (1.0, {"click": 1}, False), "b": (0.0, {}, False), "c": (0.0, {}, False)},
        [],
    ),
    "feedback after every item was emitted": (
        [slate(), imp(), fb("exit", ts=102), fb("click", "a", ts=103)],
        {"a": (0.0, {}, True), "b": (0.0, {}, True), "c": (0.0, {}, True)},
        [("late", "feedback", "r1")],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_join(name: str) -> None:
    events, expected, dead = CASES[name]
    r = run(events)
    assert clicks(r) == expected
    assert sorted(r.dead) == sorted(dead)
    assert_conservation(r.join)
    assert sum(r.join.pending().values()) == 0, "everything is settled once the windows closed"
    assert r.join.pending_items() == 0


def test_transition_carries_the_logged_state_and_next_state() -> None:
    r = run([slate(), imp(), fb("click", "b", ts=105), fb("add_to_cart", "b", ts=106)])
    t = r.transitions["r1:1"]
    assert (t.state, t.action, t.position, t.slate) == (STATE, "b", 1, ["a", "b", "c"])
    assert [(i.item_id, i.event) for i in t.next_state.history] == [("old", "click"), ("b", "click"), ("b", "add_to_cart")]
    assert t.next_state.context == STATE.context
    assert (t.propensity, t.policy, t.model_version, t.ts_impression) == (0.5, "dqn", 3, 101.0)


def test_inline_propensities_and_policy_are_used() -> None:
    r = run([imp(state=STATE, propensities=[0.9, 0.05, 0.05], policy="replay", model_version=1)])
    t = r.transitions["r1:0"]
    assert (t.propensity, t.policy, t.model_version) == (0.9, "replay", 1)


def test_a_fallback_impression_with_its_own_state_speaks_for_itself_even_if_the_slate_came_late() -> None:
    """A frontend that gave up waiting shows a random slate with its state and propensities
    inline; the agent's slate for the same request may still arrive. The transition must not
    claim the agent's policy for items the agent did not choose."""
    shown = ("x", "y", "z")
    r = run([imp(items=shown, state=STATE, propensities=[1 / 3, 1 / 2, 1.0], policy="random"), slate(ts=102.0)])
    t = r.transitions["r1:0"]
    assert (t.action, t.propensity, t.policy, t.model_version) == ("x", 1 / 3, "random", None)


def test_windows_close_on_event_time_before_any_wall_clock_help() -> None:
    r = run([slate(), imp(), fb("click", "a"), *later(101 + WINDOW + 0.5)], drain=False)
    assert {"r1:0", "r1:1", "r1:2"} <= r.emitted_before_drain


def test_a_topic_read_ahead_does_not_make_the_others_late() -> None:
    # A backlog: the slates topic is read far ahead of impressions and feedback.
    events = [slate(), slate(req="r2", ts=102), *[slate(req=f"x{i}", items=("z",), ts=200.0 + i) for i in range(5)],
              imp(), fb("click", "b", ts=105), imp(req="r2", ts=103), fb("click", "a", ts=104, req="r2")]
    r = run(events, wall=5000.0)
    assert r.dead == []
    assert r.transitions["r1:1"].reward == 1.0 and r.transitions["r2:0"].reward == 1.0


def test_purchase_emits_at_once_and_the_rest_waits() -> None:
    r = run([slate(), imp(), fb("purchase", "c")], drain=False)
    assert r.emitted_before_drain == {"r1:2"}
    assert r.join.pending_items() == 2


def test_a_quiet_partition_closes_its_windows_on_wall_clock() -> None:
    join = Join(CONFIG)
    for topic, event in [slate(), imp()]:
        join.process(0, topic, event, now=1000.0)
    assert join.tick(0, now=1000.5).transitions == []  # not idle long enough
    assert join.tick(0, now=1000.0 + WINDOW - 5).transitions == []  # window still open
    out = join.tick(0, now=1000.0 + WINDOW + 2)
    assert sorted(t.transition_id for t in out.transitions) == ["r1:0", "r1:1", "r1:2"]


def test_without_acks_a_record_is_not_closed_and_a_rebuild_re_emits_the_same_ids() -> None:
    join = Join(CONFIG)
    first = Counter()
    for topic, event in [slate(), imp(), *later(500.0)]:
        first.update(t.transition_id for t in join.process(0, topic, event, now=event.ts).transitions)
    assert first == Counter({"r1:0": 1, "r1:1": 1, "r1:2": 1})
    # A crash before the acks: the restored owner has the records, not the in-flight marks.
    join.rebuild({0}, now=5000.0)
    again = join.tick(0, now=10_000.0)
    assert sorted(t.transition_id for t in again.transitions if t.request_id == "r1") == ["r1:0", "r1:1", "r1:2"]


def test_acked_records_persist_as_closed_markers_then_disappear() -> None:
    join = Join(CONFIG)
    outs = [join.process(0, t, e, now=e.ts) for t, e in [slate(), imp(), fb("exit", ts=102)]]
    transitions = [t for o in outs for t in o.transitions]
    writes = {}
    for t in transitions:
        writes.update(join.acked(t).writes)
    assert writes["r1"][1].closed_at is not None and writes["r1"][1].slate is None
    out = join.tick(0, now=10_000.0)
    assert out.writes["r1"] == (0, None)
    assert "r1" not in join.records


def test_rebuild_keeps_only_the_assigned_partitions() -> None:
    join = Join(CONFIG)
    join.process(0, *slate("r0"), now=100.0)
    join.process(1, *slate("r1"), now=100.0)
    join.rebuild({1}, now=100.0)
    assert set(join.records) == {"r1"}


@pytest.mark.parametrize("bad", [dict(window_s=0), dict(history_length=0), dict(weights={"like": 1.0}),
                                 dict(weights={"click": float("nan")})])
def test_impossible_join_settings_are_refused(bad: dict) -> None:
    from shelfq.contracts.errors import ConfigError

    with pytest.raises(ConfigError):
        JoinConfig(**bad)


def test_synthetic_traffic_through_the_join_matches_its_oracle() -> None:
    from shelfq.streams.synthetic import synthetic_traffic

    traffic = synthetic_traffic(users=40, requests_per_user=4, slate_size=5, t0=1000.0, seed=3, gap_s=20.0)
    r = run([(topic, event) for topic, _key, event in traffic.events])
    assert {tid: (t.reward, t.done) for tid, t in r.transitions.items()} == {
        tid: (e.reward, e.done) for tid, e in traffic.expected.items()}
    assert r.dead == []
    assert_conservation(r.join)


def test_an_input_with_unread_messages_is_never_idle() -> None:
    join = Join(CONFIG)
    for topic, event in [slate(), imp(), fb("click", "a", ts=102)]:
        join.process(0, topic, event, now=1000.0)
    # Much later on the wall clock the slates topic races ahead while feedback still has a
    # backlog: feedback must keep holding the watermark back.
    join.note_backlog(0, {"feedback"})
    for i in range(3):
        join.process(0, *slate(req=f"x{i}", items=("z",), ts=500.0 + i), now=1010.0)
        join.process(0, *imp(req=f"x{i}", items=("z",), ts=500.0 + i), now=1010.0)
    assert join.tick(0, now=1010.0).transitions == []
    join.note_backlog(0, set())  # caught up, and quiet: now it may close
    assert {t.transition_id for t in join.tick(0, now=1010.0).transitions} >= {"r1:0", "r1:1", "r1:2"}


def test_re_emission_after_a_crash_is_identical() -> None:
    # Purchase of "b", a click on "c", then the exit: b closed at its purchase (done False,
    # without the later click in next_state), the rest at the exit (done True).
    events = [slate(), imp(), fb("purchase", "b", ts=105), fb("click", "c", ts=106), fb("exit", ts=107)]
    join = Join(CONFIG)
    first = {t.transition_id: t for _e in [0] for topic, event in events
             for t in join.process(0, topic, event, now=1000.0).transitions}
    join.rebuild({0}, now=1000.0)  # restored from the changelog, no acks recorded
    again = {t.transition_id: t for t in join.tick(0, now=10_000.0).transitions}
    strip = lambda t: msgspec.structs.replace(t, ts_emitted=0.0)  # noqa: E731
    assert {k: strip(v) for k, v in again.items()} == {k: strip(v) for k, v in first.items()}
    assert (first["r1:1"].done, first["r1:2"].done) == (False, True)
    assert [i.item_id for i in first["r1:1"].next_state.history] == ["old", "b"]


def test_a_restored_quiet_partition_still_closes_its_windows() -> None:
    old = Join(CONFIG)
    for topic, event in [slate(), imp()]:
        old.process(0, topic, event, now=1000.0)
    restored = Join(CONFIG, records=dict(old.records))  # a new worker, nothing else arrives
    restored.rebuild({0}, now=2000.0)
    assert restored.tick(0, now=2000.5).transitions == []
    out = restored.tick(0, now=2000.0 + WINDOW + 5)
    assert sorted(t.transition_id for t in out.transitions) == ["r1:0", "r1:1", "r1:2"]


def test_events_from_the_far_future_are_dead_letters() -> None:
    join = Join(CONFIG)
    out = join.process(0, *fb("click", "a", ts=1.7e12), now=1000.0)  # milliseconds, not seconds
    assert [(d.reason, d.topic) for d in out.dead_letters] == [("future", "feedback")]
    assert join.records == {} and join.pending() == Counter()
    assert_conservation(join)


def test_an_exit_after_every_item_is_out_is_late() -> None:
    r = run([slate(), imp(), *later(101 + WINDOW + 1), fb("exit", ts=120)])
    assert ("late", "feedback", "r1") in r.dead
    assert not any(t.done for t in r.transitions.values())


def test_only_attributed_feedback_is_reported_for_user_histories() -> None:
    join = Join(CONFIG)
    for topic, event in [slate(), imp()]:
        join.process(0, topic, event, now=1000.0)
    assert [f.item_id for f in join.process(0, *fb("click", "a"), now=1000.0).attributed] == ["a"]
    assert join.process(0, *fb("click", "a"), now=1000.0).attributed == []  # duplicate
    assert join.process(0, *fb("click", "x"), now=1000.0).attributed == []  # orphan


def test_a_transition_the_broker_refused_is_emitted_again_identically() -> None:
    join = Join(CONFIG)
    emitted: list[Transition] = []
    for topic, event in [slate(), imp(), *later(500.0)]:
        emitted += [t for t in join.process(0, topic, event, now=event.ts).transitions if t.request_id == "r1"]
    refused, delivered = emitted[0], emitted[1:]
    for t in delivered:
        join.acked(t)
    join.failed(refused)
    again = [t for t in join.tick(0, now=600.0).transitions if t.request_id == "r1"]
    assert [t.transition_id for t in again] == [refused.transition_id]
    assert msgspec.structs.replace(again[0], ts_emitted=0.0) == msgspec.structs.replace(refused, ts_emitted=0.0)
    join.acked(again[0])
    assert not [t for t in join.tick(0, now=700.0).transitions if t.request_id == "r1"]


# -- a session's exit closes the session ----------------------------------------------------


def session_of_three() -> list[tuple[str, Event]]:
    """Requests r1, r2, r3 of session s1 shown 20 s apart, a click on each, an add to cart on
    r1's "b" after the exit (so it must not count), and the exit naming the last one."""
    return [slate("r1", ts=100), imp("r1", ts=101), fb("click", "a", ts=105, req="r1"),
            slate("r2", ts=120), imp("r2", ts=121), fb("click", "b", ts=125, req="r2"),
            slate("r3", ts=140), imp("r3", ts=141), fb("click", "c", ts=145, req="r3"),
            fb("exit", ts=150, req="r3"), fb("add_to_cart", "b", ts=152, req="r1")]


def strip(transitions) -> dict[str, Transition]:
    return {t.transition_id: msgspec.structs.replace(t, ts_emitted=0.0) for t in transitions}


def test_a_session_exit_emits_every_request_of_the_session_at_once_done_only_on_the_last() -> None:
    join = Join(CONFIG)
    events = session_of_three()
    outs = [join.process(0, topic, event, now=event.ts) for topic, event in events]
    at_exit = {t.transition_id: t for t in outs[-2].transitions}
    assert sorted(at_exit) == [f"{r}:{p}" for r in ("r1", "r2", "r3") for p in range(3)]
    assert all(t.done == (t.request_id == "r3") for t in at_exit.values())
    assert [(at_exit[k].reward, at_exit[k].reward_parts) for k in ("r1:0", "r2:1", "r3:2")] == [(1.0, {"click": 1})] * 3
    # r1 closed at the exit: its next_state has what happened up to it, and the later cart is late.
    assert [i.item_id for i in at_exit["r1:1"].next_state.history] == ["old", "a"]
    assert [(d.reason, d.event.request_id) for d in outs[-1].dead_letters] == [("late", "r1")]
    assert set(outs[-2].writes) == {"r1", "r2", "r3"}, "what closed each record is persisted"
    assert [f.event for f in outs[-2].attributed] == ["exit"]
    assert join.outcomes[("feedback", "attributed")] == 4 and join.outcomes[("feedback", "late")] == 1
    for t in at_exit.values():
        join.acked(t)
    assert join.pending_items() == 0
    assert_conservation(join)


def test_a_session_exit_leaves_other_sessions_and_later_impressions_open() -> None:
    join = Join(CONFIG)
    events = [slate("r1", ts=100), imp("r1", ts=101),
              slate("other", ts=102, session="s2"), imp("other", ts=103, session="s2"),
              slate("r2", ts=120), imp("r2", ts=121),
              slate("after", ts=155), imp("after", ts=156),  # shown after the exit: what follows it
              fb("exit", ts=150, req="r2")]
    out = Counter()
    for topic, event in events:
        out.update(t.request_id for t in join.process(0, topic, event, now=event.ts).transitions)
    assert out == Counter({"r1": 3, "r2": 3})
    later_on = {t.transition_id: t for t in join.tick(0, now=10_000.0).transitions}
    assert {t.request_id for t in later_on.values()} == {"other", "after"}
    assert not any(t.done for t in later_on.values())
    assert_conservation(join)


def test_an_impression_arriving_after_the_exit_of_its_session_stays_open_if_shown_later() -> None:
    join = Join(CONFIG)
    for topic, event in [slate("r1", ts=100), imp("r1", ts=101), fb("exit", ts=150, req="r1"), slate("r2", ts=159)]:
        for t in join.process(0, topic, event, now=event.ts).transitions:
            join.acked(t)
    out = join.process(0, *imp("r2", ts=160), now=160.0)
    assert out.transitions == []
    assert join.pending_items() == 3, "r2's items wait for their window"
    assert sorted(t.transition_id for t in join.tick(0, now=10_000.0).transitions) == ["r2:0", "r2:1", "r2:2"]


def test_a_purchased_item_keeps_its_purchase_close_when_the_session_exits() -> None:
    join = Join(CONFIG)
    events = [slate("r1"), imp("r1"), fb("click", "b", ts=104), fb("purchase", "b", ts=105), fb("click", "c", ts=106),
              slate("r2", ts=120), imp("r2", ts=121), fb("exit", ts=150, req="r2")]
    emitted = [t for topic, event in events for t in join.process(0, topic, event, now=event.ts).transitions]
    r1 = {t.position: t for t in emitted if t.request_id == "r1"}
    assert [t.transition_id for t in emitted].count("r1:1") == 1, "the purchased item is not emitted again"
    b, c = r1[1], r1[2]
    assert (b.done, b.reward_parts, [i.item_id for i in b.next_state.history]) == (False, {"click": 1, "purchase": 1},
                                                                                  ["old", "b", "b"])
    assert (c.done, c.reward, [i.item_id for i in c.next_state.history]) == (False, 1.0, ["old", "b", "b", "c"])


def test_an_earlier_request_joined_after_its_sessions_exit_closes_at_once() -> None:
    """Topics are not ordered with each other: r1's impression (and another time r1's slate)
    arrives after the exit that r2 named. It closes at the exit: what came before the exit
    counts, what came after is late."""
    for last_to_arrive in ("impressions", "slates"):
        join = Join(CONFIG)
        held = [slate("r1"), imp("r1")]
        first = [e for e in held if e[0] != last_to_arrive]
        missing = next(e for e in held if e[0] == last_to_arrive)
        events = [*first, fb("click", "a", ts=110, req="r1"), fb("click", "b", ts=155, req="r1"),
                  slate("r2", ts=120), imp("r2", ts=121), fb("exit", ts=150, req="r2")]
        for topic, event in events:
            join.process(0, topic, event, now=event.ts)
        out = join.process(0, *missing, now=160.0)
        got = {t.position: t for t in out.transitions}
        assert sorted(got) == [0, 1, 2], last_to_arrive
        assert [(got[p].reward, got[p].done) for p in range(3)] == [(1.0, False), (0.0, False), (0.0, False)]
        assert [(d.reason, d.event.item_id) for d in out.dead_letters] == [("late", "b")]
        assert out.writes["r1"][1].session_exit_ts == 150.0
        for t in out.transitions:
            join.acked(t)
        assert_conservation(join)


class Changelog:
    """The join table as the worker keeps it: only ``Output.writes`` reach it, as msgpack."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}

    def apply(self, out) -> None:
        for key, (_partition, record) in out.writes.items():
            if record is None:
                self.store.pop(key, None)
            else:
                self.store[key] = msgspec.msgpack.encode(record)

    def restore(self) -> Join:
        from shelfq.streams.join import Record

        decoder = msgspec.msgpack.Decoder(Record)
        return Join(CONFIG, records={k: decoder.decode(v) for k, v in self.store.items()})


def test_a_crash_between_a_session_exit_and_its_acks_re_emits_identical_transitions_soon() -> None:
    events = [*session_of_three()[:-1], fb("purchase", "c", ts=107, req="r1")]
    events.insert(-2, events.pop())  # the purchase arrives before the exit
    join, log = Join(CONFIG), Changelog()
    first: list[Transition] = []
    for topic, event in events:
        out = join.process(0, topic, event, now=event.ts)
        log.apply(out)
        first += out.transitions
    assert len(first) == 9
    for t in first:
        if t.request_id == "r3":  # r3's acks made it, the others' did not
            log.apply(join.acked(t))
    restored = log.restore()
    restored.rebuild({0}, now=1000.0)
    # Soon, not a window later: the exit already decided when every item closes.
    again = strip(t for t in restored.tick(0, now=1002.0).transitions)
    assert again == {k: v for k, v in strip(first).items() if not k.startswith("r3")}
    assert (again["r1:2"].reward_parts, again["r1:2"].done) == ({"purchase": 1}, False)


def test_a_restarted_join_remembers_the_sessions_exit() -> None:
    join, log = Join(CONFIG), Changelog()
    for topic, event in [slate("r1"), slate("r2", ts=120), imp("r2", ts=121), fb("exit", ts=150, req="r2")]:
        out = join.process(0, topic, event, now=event.ts)
        log.apply(out)
        for t in out.transitions:
            log.apply(join.acked(t))
    assert msgspec.msgpack.Decoder().decode(log.store["r2"])[-2:] == [150.0, ["u1", "s1"]], "r2 is a closed marker"
    restored = log.restore()
    restored.rebuild({0}, now=1000.0)
    out = restored.process(0, *imp("r1"), now=1000.0)
    assert sorted(t.transition_id for t in out.transitions) == ["r1:0", "r1:1", "r1:2"]
    assert not any(t.done for t in out.transitions)


def test_session_bookkeeping_is_forgotten_once_the_windows_pass() -> None:
    join = Join(CONFIG)
    for topic, event in session_of_three():
        for t in join.process(0, topic, event, now=event.ts).transitions:
            join.acked(t)
    # The join's memory of sessions has no public view: what is checked is that it is freed.
    assert join._sessions[0] == {} and join._exits[0] == {("u1", "s1"): [150.0]}  # noqa: SLF001
    join.tick(0, now=10_000.0)
    assert join._exits[0] == {} and join.records == {}  # noqa: SLF001


def test_records_stored_before_the_session_fields_still_decode() -> None:
    from shelfq.streams.join import Record

    class OldRecord(msgspec.Struct, array_like=True):
        request_id: str
        partition: int
        slate: Slate | None = None
        impression: Impression | None = None
        feedback: list[Feedback] = []
        emitted: list[int] = []
        closed_at: float | None = None

    old = OldRecord("r1", 0, impression=imp()[1], emitted=[1], closed_at=None)  # type: ignore[arg-type]
    rec = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=Record)
    assert (rec.request_id, rec.emitted, rec.session_exit_ts, rec.exited_session) == ("r1", [1], None, None)


def test_sessions_through_the_join_conserve_every_event() -> None:
    from shelfq.streams.synthetic import synthetic_traffic

    # Five requests per session, each session ending with an exit on its last, delivered in a
    # shuffled order, all well inside one window (so only exits and purchases emit early).
    import random

    traffic = synthetic_traffic(users=30, requests_per_user=5, slate_size=3, t0=1000.0, seed=5, gap_s=5.0, exit_p=1.0)
    events = [(topic, event) for topic, _key, event in traffic.events]
    random.Random(1).shuffle(events)
    r = run(events, wall=2000.0)
    assert_conservation(r.join)
    assert sum(r.join.pending().values()) == 0 and r.join.pending_items() == 0
    assert r.emitted_before_drain == set(traffic.expected), "every session's exit closed all of it"
    assert all(t.request_id.endswith("-4") for t in r.transitions.values() if t.done), "done only on the last"
