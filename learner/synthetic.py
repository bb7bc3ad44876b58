"""Transitions made up for tests and benchmarks: two tiny MDPs whose click-greedy action is
wrong in the long run, and random traffic shaped like the join's output.

The bait-or-build MDP. An empty history is the start state. "bait" earns a click (reward 1)
and the session ends; "build" earns a little (0.5) and leads to a state whose "build" earns a
purchase (2). With gamma = 0.9 the optimal value of building first is 0.5 + 0.9 * 2 = 2.3 > 1,
so the long-term policy ranks build above bait at the start, and the myopic one the reverse.

>>> ts = bait_or_build(n=4, seed=0)
>>> sorted({(t.action, t.reward, t.done, len(t.state.history)) for t in ts})[:2]
[('bait', 1.0, True, 0), ('build', 0.5, False, 0)]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shelfq.contracts.events import Interaction, InteractionKind, State, Transition

BAIT, BUILD, GEM = "bait", "build", "gem"
T0 = 1_700_000_000.0


def _transition(i: int, state: State, action: str, reward: float, next_state: State, done: bool,
                user: str = "u-1", slate: list[str] | None = None, position: int = 0) -> Transition:
    slate = slate or [action]
    kinds = {0.0: {}, 0.5: {"click": 1}, 1.0: {"click": 1}, 2.0: {"purchase": 1}}
    return Transition(
        transition_id=f"r-{i}:{position}", request_id=f"r-{i}", user_id=user, session_id=f"s-{i}", state=state,
        action=action, position=position, slate=slate, reward=reward, reward_parts=kinds.get(reward, {"click": 1}),
        next_state=next_state, done=done, ts_impression=T0 + i, ts_emitted=T0 + i + 1, propensity=0.5,
        policy="random", model_version=None)


def bait_or_build(n: int, seed: int = 0) -> list[Transition]:
    """``n`` transitions of the bait-or-build MDP under a uniformly random behaviour policy."""
    rng = np.random.default_rng(seed)
    start = State(history=[], context={})
    built = State(history=[Interaction(item_id=BUILD, event="click", ts=T0)], context={})
    out = []
    for i in range(n):
        action = BAIT if rng.random() < 0.5 else BUILD
        if rng.random() < 0.5:  # at the start
            if action == BAIT:
                out.append(_transition(i, start, BAIT, 1.0, State(history=[Interaction(item_id=BAIT, event="click", ts=T0)]), True))
            else:
                out.append(_transition(i, start, BUILD, 0.5, built, False))
        else:  # after building
            after = State(history=[*built.history, Interaction(item_id=action, event="click" if action == BAIT else "purchase", ts=T0 + 1)])
            out.append(_transition(i, built, action, 1.0 if action == BAIT else 2.0, after, True))
    return out


BAIT_ATTRACTION, GEM_ATTRACTION = 3.0, 0.5


def bait_or_gem_slates(n: int, seed: int = 0) -> list[Transition]:
    """``n`` impressions (two transitions each) of a slate MDP where items compete for the click.

    Every slate shows "bait" and "gem" in random order; the shopper clicks one of them or
    neither by a multinomial logit with attractions 3 and 0.5 against 1 for no click. At the
    start a click on either earns 1, but bait ends the session while gem engages the shopper,
    whose next click (on either) earns 3 with a purchase; no click ends the session. With
    gamma = 0.9, gem is worth 1 + 0.9 * (3 * 3 + 0.5 * 3) / 4.5 = 3.1 given a click, bait 1;
    shown alone, v Qbar / (1 + v) ranks gem first (1.03 vs 0.75), and bait first when myopic.

    >>> ts = bait_or_gem_slates(3, seed=0)
    >>> len(ts), sorted({t.position for t in ts})
    (6, [0, 1])
    """
    rng = np.random.default_rng(seed)
    attraction = {BAIT: BAIT_ATTRACTION, GEM: GEM_ATTRACTION}
    start = State(history=[], context={})
    out: list[Transition] = []
    for i in range(n):
        engaged = rng.random() < 0.5
        state = State(history=[Interaction(item_id=GEM, event="click", ts=T0)]) if engaged else start
        slate = [BAIT, GEM] if rng.random() < 0.5 else [GEM, BAIT]
        weights = np.array([attraction[a] for a in slate] + [1.0])
        pick = int(rng.choice(3, p=weights / weights.sum()))  # 2: no click
        clicked = slate[pick] if pick < 2 else None
        feedback = [Interaction(item_id=clicked, event="click", ts=T0 + 1)] if clicked else []
        if clicked and engaged:
            feedback.append(Interaction(item_id=clicked, event="purchase", ts=T0 + 2))
        next_state = State(history=[*state.history, *feedback])
        done = clicked is None or engaged or clicked == BAIT
        for position, item in enumerate(slate):
            reward = (3.0 if engaged else 1.0) if item == clicked else 0.0
            parts = ({"click": 1, "purchase": 1} if engaged else {"click": 1}) if item == clicked else {}
            out.append(Transition(
                transition_id=f"r-{i}:{position}", request_id=f"r-{i}", user_id="u-1", session_id=f"s-{i}",
                state=state, action=item, position=position, slate=slate, reward=reward, reward_parts=parts,
                next_state=next_state, done=done, ts_impression=T0 + i, ts_emitted=T0 + i + 1, propensity=0.5,
                policy="random", model_version=None))
    return out


def random_transitions(n: int, items: int = 2000, history: int = 15, slate_size: int = 10,
                       seed: int = 0) -> Iterator[Transition]:
    """Join-shaped transitions: histories of ``history`` interactions over ``items`` items,
    rewards at roughly the synthetic shoppers' click rates."""
    rng = np.random.default_rng(seed)
    ids = [f"sku-{i}" for i in range(items)]
    kinds: tuple[InteractionKind, ...] = ("click", "add_to_cart", "purchase")
    for i in range(n):
        hist = [Interaction(item_id=ids[j], event=kinds[k], ts=T0 + i + m)
                for m, (j, k) in enumerate(zip(rng.integers(0, items, history), rng.choice(3, history, p=[0.8, 0.15, 0.05])))]
        slate = [ids[j] for j in rng.choice(items, slate_size, replace=False)]
        position = int(rng.integers(0, slate_size))
        r = float(rng.choice([0.0, 1.0, 3.0, 8.0], p=[0.85, 0.1, 0.04, 0.01]))
        state = State(history=hist, context={"device": "app" if i % 2 else "web"})
        next_hist = hist[1:] + [Interaction(item_id=slate[position], event="click", ts=T0 + i + history)] if r else hist
        yield _transition(i, state, slate[position], r, State(history=next_hist, context=state.context),
                          bool(rng.random() < 0.1), user=f"u-{i % 997}", slate=slate, position=position)
