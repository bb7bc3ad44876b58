"""What the chaos run (``shelfq.bench.chaos``) feeds the pipeline: steady synthetic load with a
known expected output, and hostile messages for every topic a component reads.

Every hostile message is one that a decoder must refuse (so each must come back as a dead
letter with reason ``invalid``): a valid example event made hostile in one part, or no event
at all.

>>> kinds = {label for label, _key, _value, _headers in hostile_messages("requests", max_event_bytes=4096)}
>>> sorted(kinds)[:4]
['deep_nesting', 'float32_overflow', 'garbage_bytes', 'huge_int']
>>> all(refused("requests", v, 4096) for _l, _k, v, _h in hostile_messages("requests", max_event_bytes=4096))
True
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import defaultdict
from typing import Any

#: The topics a component reads, and who reads each (the dead letters name them).
READERS: dict[str, tuple[str, ...]] = {
    "requests": ("agent",), "slates": ("streams",), "impressions": ("streams",), "feedback": ("streams",),
    "transitions": ("learner",), "items": ("agent", "learner"), "user-state": ("agent",), "models": ("agent",),
}
EVENT_TOPICS = tuple(t for t in READERS if t != "models")
#: How each event-topic field is made hostile, beyond what every topic gets.
_NUMBER_FIELD = {"requests": ("context", {"n": 10**400}), "slates": ("scores", [1e308, 1.0, 1.0]),
                 "impressions": ("ts", -1e308), "feedback": ("value", 1e308), "items": ("price", 1e308),
                 "transitions": ("reward", 3.5e38), "user-state": ("ts", float("1e308"))}


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()  # escapes lone surrogates as \udxxx, writes big ints whole


def hostile_messages(topic: str, max_event_bytes: int) -> list[tuple[str, str, bytes, list | None]]:
    """(label, key, value, headers) of the hostile messages for ``topic``."""
    if topic == "models":
        return _hostile_models()
    from shelfq.contracts.events import encode
    from shelfq.contracts.examples import EXAMPLES

    base = json.loads(encode(EXAMPLES[topic][1]))
    id_field = "item_id" if topic == "items" else "user_id"
    field, number = _NUMBER_FIELD[topic]
    other = "slates" if topic == "requests" else "requests"
    deep = b"[" * 3000 + b"]" * 3000
    out = [
        ("deep_nesting", _dumps(base)[:-1] + b', "ignored": ' + deep + b"}"),
        ("huge_int", _dumps({**base, "ts" if "ts" in base else "ts_impression": 10**400})),
        ("float32_overflow", _dumps({**base, field: number})),
        ("lone_surrogate", _dumps({**base, id_field: "u\ud800"})),
        ("oversized", _dumps({**base, "padding": "x" * (max_event_bytes + 1)})),
        ("garbage_bytes", b"\xff\xfe\x00\x9c not json at all"),
        ("wrong_kind", encode(EXAMPLES[other][1])),
        ("missing_fields", _dumps({"schema": base["schema"]})),
    ]
    return [(label, f"hostile-{topic}-{label}", value, None) for label, value in out]


def _hostile_models() -> list[tuple[str, str, bytes, list | None]]:
    """Model messages of policy ``dqn`` that no loader may take (nor count as a version)."""
    import struct

    from shelfq.contracts.examples import example_model

    value, headers = example_model()
    good = dict(headers._replace(version=999_999).to_headers())
    overlap = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    return [
        ("corrupt_body", "dqn", value[: len(value) // 2], list(good.items())),
        ("version_not_int", "dqn", value, list({**good, "version": b"\xff1e308"}.items())),
        ("config_deep_nesting", "dqn", value, list({**good, "config": b'{"a":' + b"[" * 5000}.items())),
        ("overlapping_offsets", "dqn", struct.pack("<Q", len(overlap)) + overlap + bytes(12), list(good.items())),
    ]


def refused(topic: str, value: bytes, max_event_bytes: int) -> bool:
    """Whether the decoder of ``topic``'s events refuses ``value`` (what its reader does)."""
    from shelfq.contracts.errors import EventError
    from shelfq.contracts.events import decode
    from shelfq.contracts.topics import event_kind

    try:
        if topic == "transitions":  # the learner reads only the fields it trains on
            from shelfq.learner.wire import decode_transition

            decode_transition(value, max_bytes=max_event_bytes)
        else:
            decode(value, event_kind(topic), max_bytes=max_event_bytes)
    except EventError:
        return True
    return False


class Load:
    """Steady seeded traffic in a thread: synthetic shoppers (slates, impressions, feedback,
    with the transitions and histories the join must make of them) and requests to the agent.

    The producer keeps what it cannot send while the broker is away (as a shop's frontend
    would), so the event times of traffic made during an outage are from then."""

    def __init__(self, settings: Any, seed: int, sessions_per_s: float, requests_per_s: float,
                 tick_s: float = 0.25) -> None:
        from shelfq.contracts.kafka import ReliableProducer

        self.settings, self.seed, self.tick_s = settings, seed, tick_s
        self.sessions_per_s, self.requests_per_s = sessions_per_s, requests_per_s
        self.producer = ReliableProducer(settings)
        self.expected: dict[str, Any] = {}  # transition_id -> streams.synthetic.Expected
        self.histories: dict[str, set[tuple[str, str, float]]] = defaultdict(set)
        self.requests: list[str] = []
        self.events = 0
        self.hostile: list[dict[str, Any]] = []  # each with its topic, partition, offset once delivered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """Stop sending (what is queued still goes out)."""
        self._stop.set()

    def stop(self) -> None:
        """Stop sending and wait until everything sent is on the broker."""
        self._stop.set()
        self._thread.join(30)
        self.flush()

    def flush(self) -> None:
        from shelfq.contracts.outage import Unacknowledged

        deadline = time.monotonic() + 600
        while True:  # the broker may be away for a while yet: the producer keeps it all
            try:
                with self._lock:
                    self.producer.flush(30)
                return
            except Unacknowledged:
                if time.monotonic() > deadline:
                    raise

    def _run(self) -> None:
        tick = 0
        due_sessions = due_requests = 0.0
        while not self._stop.wait(self.tick_s):
            due_sessions += self.sessions_per_s * self.tick_s
            due_requests += self.requests_per_s * self.tick_s
            with self._lock:
                if due_sessions >= 1:
                    self._sessions(tick, int(due_sessions))
                    due_sessions -= int(due_sessions)
                for _ in range(int(due_requests)):
                    self._request()
                due_requests -= int(due_requests)
                self.producer.poll(0)
            tick += 1

    def _sessions(self, tick: int, users: int) -> None:
        import msgspec

        from shelfq.contracts.events import Feedback, encode
        from shelfq.streams.synthetic import synthetic_traffic

        traffic = synthetic_traffic(users=users, requests_per_user=2, slate_size=3, seed=self.seed * 100_003 + tick,
                                    gap_s=0.2, click_p=0.3, tag=f"c{tick}-")
        shift = time.time()
        for topic, key, event in traffic.events:
            moved = msgspec.structs.replace(event, ts=event.ts + shift)
            self.producer.produce(self.settings.topic(topic), encode(moved), key)
            if isinstance(moved, Feedback) and moved.item_id is not None:
                self.histories[moved.user_id].add((moved.item_id, moved.event, round(moved.ts, 6)))
        self.expected.update(traffic.expected)
        self.events += len(traffic.events)

    def _request(self) -> None:
        from shelfq.contracts.events import Request, encode

        n = len(self.requests)
        req = Request(request_id=f"q{n}", user_id=f"qu{n % 97}", ts=time.time(), slate_size=3)
        self.producer.produce(self.settings.topic("requests"), encode(req), req.user_id)
        self.requests.append(req.request_id)

    def inject_hostile(self, round_: int) -> int:
        """Queue every hostile message of every topic; returns how many."""
        sent = 0
        with self._lock:
            for topic in READERS:
                for label, key, value, headers in hostile_messages(topic, self.settings.max_event_bytes):
                    record = {"topic": topic, "label": label, "round": round_}
                    self.hostile.append(record)

                    def delivered(msg: Any, record: dict[str, Any] = record) -> None:
                        record.update(partition=msg.partition(), offset=msg.offset())

                    keyed = key if topic == "models" else f"{key}-{round_}"  # a model's key is its policy
                    self.producer.produce(self.settings.topic(topic), value, keyed, headers=headers,
                                          on_delivered=delivered)
                    sent += 1
        return sent


def seeded_gaps(seed: int, count: int, mean_s: float) -> list[float]:
    """Seconds of steady load before each fault: uniform in [0.5, 1.5] x ``mean_s``.

    >>> seeded_gaps(3, 2, 10.0) == seeded_gaps(3, 2, 10.0)
    True
    >>> all(5.0 <= g <= 15.0 for g in seeded_gaps(1, 50, 10.0))
    True
    """
    rng = random.Random(seed)
    return [mean_s * rng.uniform(0.5, 1.5) for _ in range(count)]
