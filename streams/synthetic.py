"""Synthetic shoppers for tests and benchmarks: slates, impressions and feedback in event-time
order, with the rewards the join must produce (an oracle that needs no join).

>>> traffic = synthetic_traffic(users=2, requests_per_user=2, slate_size=3, t0=1000.0, seed=7)
>>> sorted({topic for topic, _key, _event in traffic.events})
['feedback', 'impressions', 'slates']
>>> len(traffic.expected) == 2 * 2 * 3
True
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from shelfq.contracts.events import Feedback, FeedbackKind, Impression, Interaction, Slate, State
from shelfq.streams.join import DEFAULT_WEIGHTS


@dataclass(frozen=True)
class Expected:
    reward: float
    done: bool


#: The events synthetic shoppers send (each has a ``ts``).
JoinInput = Slate | Impression | Feedback


@dataclass
class SyntheticTraffic:
    events: list[tuple[str, str, JoinInput]]
    """(logical topic, key, event), in event-time order."""
    expected: dict[str, Expected]
    """transition_id -> the reward and done flag the join must emit."""


def synthetic_traffic(
    users: int,
    requests_per_user: int,
    slate_size: int = 5,
    t0: float = 0.0,
    seed: int = 0,
    click_p: float = 0.2,
    gap_s: float = 0.5,
    exit_p: float = 0.3,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
    catalog: int = 1000,
    tag: str = "",
) -> SyntheticTraffic:
    """Every user sees ``requests_per_user`` slates ``gap_s`` apart; each shown item is clicked
    with probability ``click_p``, a click leads to a cart or purchase sometimes (and is
    sometimes sent twice), and a session ends with an exit with probability ``exit_p``."""
    rng = random.Random(seed)
    events: list[tuple[str, str, JoinInput]] = []
    expected: dict[str, Expected] = {}
    for u in range(users):
        user, session = f"u{tag}{u}", f"s{tag}{u}"
        start = t0 + rng.random() * gap_s
        for r in range(requests_per_user):
            req = f"r{tag}{u}-{r}"
            ts = start + r * gap_s
            items = rng.sample(range(catalog), slate_size)
            shown = [f"i{i}" for i in items]
            state = State(history=[Interaction(item_id=f"i{rng.randrange(catalog)}", event="click", ts=max(0.0, ts - 60))])
            events.append(("slates", user, Slate(
                request_id=req, user_id=user, session_id=session, ts=ts, items=shown,
                scores=[float(slate_size - k) for k in range(slate_size)], propensities=[1.0] * slate_size,
                policy="random", state=state)))
            events.append(("impressions", user, Impression(
                request_id=req, user_id=user, session_id=session, ts=ts + 0.01, items=shown)))
            last = r == requests_per_user - 1
            exits = last and rng.random() < exit_p
            for position, item in enumerate(shown):
                kinds: list[FeedbackKind] = []
                if rng.random() < click_p:
                    kinds.append("click")
                    if rng.random() < 0.3:
                        kinds.append("add_to_cart")
                        if rng.random() < 0.5:
                            kinds.append("purchase")
                for k, kind in enumerate(kinds):
                    fb = Feedback(request_id=req, user_id=user, session_id=session, ts=ts + 0.02 + 0.01 * k,
                                  event=kind, item_id=item, value=9.99 if kind == "purchase" else None)
                    events.append(("feedback", user, fb))
                    if kind == "click" and rng.random() < 0.1:
                        events.append(("feedback", user, fb))  # a duplicate delivery
                # A purchase closes its item early, before any exit can mark it done.
                expected[f"{req}:{position}"] = Expected(
                    sum(weights.get(k, 0.0) for k in kinds), exits and "purchase" not in kinds)
            if exits:
                events.append(("feedback", user, Feedback(request_id=req, user_id=user, session_id=session,
                                                          ts=ts + 0.1, event="exit")))
    events.sort(key=lambda e: e[2].ts)
    return SyntheticTraffic(events, expected)
