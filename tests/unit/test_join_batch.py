"""``Join.process_batch`` gives exactly what ``Join.process`` gives event by event: the same
transitions, dead letters, record writes and attributed feedback, in the same order, and the
same state after, over generated streams with events out of order, duplicates, late and
orphan feedback, session exits, events from the future, idle inputs, backlogs, broker
refusals, ticks and rebuilds."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import msgspec
import pytest

from shelfq.contracts.events import Event, Feedback, Impression, encode
from shelfq.streams.join import INPUTS, Join, JoinConfig, Output
from shelfq.streams.synthetic import synthetic_traffic

PARTITIONS = 3
CONFIG = JoinConfig(window_s=5.0, allowed_lateness_s=1.0, idle_advance_s=1.0)
FUTURE = 1e6  # how far ahead a producer with a wrong clock stamps its events
Steps = list[tuple]


def stream(seed: int, users: int = 40) -> list[tuple[int, str, Event]]:
    """Synthetic shoppers (duplicates and exits included), disturbed: neighbours swapped so
    that feedback comes before its impression and impressions before their slates, some
    feedback held back until after its window, feedback on requests never shown, events
    stamped far ahead, impressions with their own state and no slate."""
    rng = random.Random(seed)
    traffic = synthetic_traffic(users=users, requests_per_user=4, slate_size=4, t0=1000.0, seed=seed,
                                click_p=0.4, gap_s=3.0, exit_p=0.5, tag=f"s{seed}")
    events = [(zlib.crc32(key.encode()) % PARTITIONS, topic, e) for topic, key, e in traffic.events]
    for i in range(len(events) - 1):  # topics are not ordered with each other
        if rng.random() < 0.25:
            events[i], events[i + 1] = events[i + 1], events[i]
    for i in rng.sample(range(len(events)), len(events) // 20):  # held back (moved, or delivered twice)
        held = events[i] if rng.random() < 0.5 else events.pop(i)
        events.insert(min(len(events), i + rng.randrange(20, 200)), held)
    slates = [(p, e) for p, topic, e in events if topic == "slates"]
    for k in range(len(events) // 15):
        p, sl = rng.choice(slates)
        at = rng.randrange(len(events))
        ts = events[at][2].ts  # type: ignore[attr-defined]
        kind = rng.random()
        if kind < 0.4:  # nobody showed this request
            ghost = Feedback(request_id=f"ghost{seed}-{k}", user_id=sl.user_id, session_id=sl.session_id, ts=ts,
                             event="click", item_id=sl.items[0])
            events.insert(at, (p, "feedback", ghost))
        elif kind < 0.6:  # an item not shown
            events.insert(at, (p, "feedback", Feedback(request_id=sl.request_id, user_id=sl.user_id,
                                                       session_id=sl.session_id, ts=ts, event="click", item_id="nope")))
        elif kind < 0.7:  # a producer with a wrong clock
            events.insert(at, (p, "feedback", Feedback(request_id=sl.request_id, user_id=sl.user_id,
                                                       session_id=sl.session_id, ts=ts + FUTURE, event="click",
                                                       item_id=sl.items[0])))
        elif kind < 0.75:  # a slate never shown
            events.insert(at, (p, "slates", msgspec.structs.replace(sl, request_id=f"unshown{seed}-{k}", ts=ts)))
        elif kind < 0.8:  # an impression whose slate never comes, with no state of its own
            events.insert(at, (p, "impressions", Impression(request_id=f"lost{seed}-{k}", user_id=sl.user_id,
                                                            session_id=sl.session_id, ts=ts, items=sl.items)))
        else:  # a replayed log: the impression carries its own state, and no slate comes
            own = Impression(request_id=f"own{seed}-{k}", user_id=sl.user_id, session_id=sl.session_id, ts=ts,
                             items=sl.items, state=sl.state, propensities=sl.propensities, policy="replay")
            events.insert(at, (p, "impressions", own))
            exits = rng.random() < 0.3
            events.insert(min(len(events), at + rng.randrange(1, 30)), (p, "feedback", Feedback(
                request_id=own.request_id, user_id=sl.user_id, session_id=sl.session_id, ts=ts + 0.5,
                event="exit" if exits else "click", item_id=None if exits else sl.items[1])))
    return events


def script(seed: int, events: list[tuple[int, str, Event]]) -> Steps:
    """Batches of 1 to 60 events at a wall time near their event times (sometimes far later,
    so inputs go idle), with what the worker does between batches: note backlogs, tick
    partitions, ack or refuse the transitions, and now and then rebuild after a rebalance."""
    rng = random.Random(seed + 1)
    steps: Steps = []
    i, wall = 0, 1000.0
    while i < len(events):
        n = rng.randint(1, 60)
        batch = events[i:i + n]
        i += n
        newest = max((e.ts for _p, _t, e in batch if e.ts < FUTURE), default=wall)  # type: ignore[attr-defined]
        wall = max(wall, newest + rng.choice([0.0, 0.2, 0.5]))
        if rng.random() < 0.1:
            wall += rng.choice([1.5, 3.0, 10.0])  # a pause: inputs go idle
        if rng.random() < 0.3:
            steps.append(("backlog", rng.randrange(PARTITIONS), frozenset(t for t in INPUTS if rng.random() < 0.4)))
        steps.append(("batch", batch, wall))
        steps.append(("acks", rng.random()))
        if rng.random() < 0.2:
            steps.append(("tick", rng.randrange(PARTITIONS), wall + rng.choice([0.0, 2.0, 20.0])))
        if rng.random() < 0.03:
            steps.append(("rebuild", frozenset(range(PARTITIONS)), wall))
    steps.append(("acks", 1.0))
    for k in range(1, 4):
        for p in range(PARTITIONS):
            steps.append(("tick", p, wall + 100.0 * k))
        steps.append(("acks", 1.0))
    return steps


def replay(join: Join, steps: Steps, batched: bool, seed: int) -> list:
    """Run ``steps``; what every call produced, encoded once its batch is done (as the worker
    persists the writes of a batch after it), and the join's state at the end."""
    rng = random.Random(seed + 2)  # the same refusals on both paths
    log: list = []
    unacked: list = []

    def record(kind: str, outs: list[Output]) -> None:
        for out in outs:
            unacked.extend(out.transitions)
            log.append((kind, [encode(t) for t in out.transitions],
                        [(d.reason, d.detail, d.topic, encode(d.event)) for d in out.dead_letters],
                        [(key, p, None if r is None else msgspec.msgpack.encode(r)) for key, (p, r) in out.writes.items()],
                        [encode(f) for f in out.attributed]))

    for step in steps:
        if step[0] == "batch":
            _, batch, wall = step
            outs = join.process_batch(batch, now=wall) if batched else [join.process(p, t, e, now=wall) for p, t, e in batch]
            record("event", outs)
        elif step[0] == "acks":
            refuse = step[1] < 0.2
            taken, unacked[:] = list(unacked), []
            outs = []
            for t in taken:
                if refuse and rng.random() < 0.3:
                    join.failed(t)
                else:
                    outs.append(join.acked(t))
            record("ack", outs)
        elif step[0] == "tick":
            record("tick", [join.tick(step[1], now=step[2])])
        elif step[0] == "backlog":
            join.note_backlog(step[1], set(step[2]))
        elif step[0] == "rebuild":
            unacked.clear()
            join.rebuild(set(step[1]), now=step[2])
    log.append(("state", sorted((k, msgspec.msgpack.encode(r)) for k, r in join.records.items()),
                sorted(join.outcomes.items()), sorted(join.inputs.items()), sorted(join.pending().items()),
                join.pending_items(), [join.watermark(p) for p in range(PARTITIONS)]))
    return log


def compare(make: Callable[[], Join], seed: int) -> tuple[list, list]:
    events = stream(seed)
    steps = script(seed, events)
    return replay(make(), steps, batched=False, seed=seed), replay(make(), steps, batched=True, seed=seed)


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_gives_exactly_what_its_events_give_one_by_one(seed: int) -> None:
    one_by_one, batched = compare(lambda: Join(CONFIG), seed)
    assert len(one_by_one) == len(batched)
    for a, b in zip(one_by_one, batched):
        assert a == b
    # The streams exercise what they are meant to: every outcome, exits, refusals.
    outcomes = {key for key, n in dict(one_by_one[-1][2]).items() if n}
    for topic, outcome in [("slates", "joined"), ("slates", "duplicate"), ("impressions", "joined"),
                           ("impressions", "orphan"), ("feedback", "attributed"), ("feedback", "duplicate"),
                           ("feedback", "late"), ("feedback", "orphan"), ("feedback", "future")]:
        assert (topic, outcome) in outcomes, (topic, outcome)
    transitions = [msgspec.json.decode(t) for entry in one_by_one if entry[0] != "state" for t in entry[1]]
    assert any(t["done"] for t in transitions) and any(not t["done"] for t in transitions)

