"""The shopper simulator as a Kafka-free Gymnasium environment: one episode is one session.

The action is a slate (catalog indices, distinct, in position order); the reward is the
session step's weighted feedback (click 1, add_to_cart 2, purchase 5, as the join's defaults).
The observation holds the user's recent interactions (the same history ``user-state`` carries,
kept across the user's sessions) and the page number; ``info["state"]`` is the very
``contracts.events.State`` an agent would log for this request, so the served policies can be
run here unchanged (``evaluation.offline``), and ``transitions_of`` labels a step the way the
streams join does, for fast offline training.

>>> env = ShopperEnv(WorldConfig(items=40, users=5), slate_size=5)
>>> obs, info = env.reset(seed=3)
>>> obs["page"], len(info["state"].history)
(0, 0)
>>> obs, reward, terminated, truncated, info = env.step([0, 1, 2, 3, 4])
>>> reward == sum(EVENT_WEIGHTS[e] for e, _item, _value in info["feedback"] if e in EVENT_WEIGHTS)
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from shelfq.contracts.events import DEFAULT_HISTORY_LENGTH, DEFAULT_REWARD_WEIGHTS, Interaction, State, Transition
from shelfq.simulator.world import Outcome, Session, World, WorldConfig

EVENT_WEIGHTS = DEFAULT_REWARD_WEIGHTS
EVENT_CODES = {"click": 1, "add_to_cart": 2, "purchase": 3}
HISTORY = DEFAULT_HISTORY_LENGTH  # interactions a state carries, as user-state by default
STEP_S = 10.0  # simulated seconds between slates


def feedback_of(outcome: Outcome, catalog_ids: Sequence[str]) -> list[tuple[str, str | None, float | None]]:
    """The feedback events (event, item_id, value) a frontend sends for ``outcome``."""
    out: list[tuple[str, str | None, float | None]] = []
    if outcome.clicked is not None:
        item = catalog_ids[outcome.clicked]
        out.append(("click", item, None))
        if outcome.add_to_cart:
            out.append(("add_to_cart", item, None))
        if outcome.purchase:
            out.append(("purchase", item, outcome.revenue))
    if outcome.exit:
        out.append(("exit", None, None))
    return out


class ShopperEnv(gym.Env):
    """Sessions of simulated shoppers. ``reset`` starts the next session of a random shopper
    of the same population (the world persists across episodes, like a real shop)."""

    metadata = {"render_modes": []}

    def __init__(self, config: WorldConfig = WorldConfig(), slate_size: int = 10, world_seed: int = 0,
                 world: World | None = None) -> None:
        if not 1 <= slate_size <= config.items:
            raise ValueError(f"slate_size must be in 1..{config.items} (the catalog), got {slate_size}")
        self.world = world if world is not None else World(config, seed=world_seed)
        self.config, self.slate_size = self.world.config, slate_size
        n = self.config.items
        self.action_space = spaces.MultiDiscrete([n] * slate_size)
        self.observation_space = spaces.Dict({
            "history_items": spaces.MultiDiscrete([n + 1] * HISTORY),  # 0 = padding, else index + 1
            "history_events": spaces.MultiDiscrete([len(EVENT_CODES) + 1] * HISTORY),
            "page": spaces.Discrete(self.config.max_steps + 1),
        })
        self.session: Session | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        user = int(self.np_random.integers(self.config.users)) if not options or "user" not in options else int(options["user"])
        self.session = self.world.start_session(user, seed=int(self.np_random.integers(2**31)))
        self.world.sessions_started += 1
        self.session_id = f"{self.world.user_id(user)}-s{self.world.sessions_started}"
        self.world.clock += 60.0  # sessions are apart in time
        return self._observation(), self._info()

    def step(self, action: Sequence[int] | np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        if self.session is None or self.session.over:
            raise RuntimeError("call reset() first: the session is over")
        slate = [int(a) for a in action]
        if len(slate) != self.slate_size or len(set(slate)) != len(slate) or not all(0 <= a < self.config.items for a in slate):
            raise ValueError(f"action must be {self.slate_size} distinct catalog indices, got {slate}")
        state = self.state()
        outcome = self.session.respond(slate)
        self.world.clock += STEP_S
        feedback = feedback_of(outcome, self.world.catalog.ids)
        history = self.histories.setdefault(self.session.user, [])
        for event, item, _value in feedback:
            if item is not None:
                history.append(Interaction(item_id=item, event=event, ts=self.world.clock))  # type: ignore[arg-type]
        del history[:-HISTORY]
        reward = float(sum(EVENT_WEIGHTS.get(event, 0.0) for event, _i, _v in feedback))
        info = self._info() | {"feedback": feedback, "outcome": outcome, "logged_state": state}
        return self._observation(), reward, outcome.exit, outcome.truncated, info

    @property
    def histories(self) -> dict[int, list[Interaction]]:
        """Each user's recent interactions; kept by the world, so environments that share a
        world (concurrent sessions of one shop) see the same histories."""
        return self.world.histories

    @property
    def clock(self) -> float:
        """Simulated event time, shared by the environments of one world."""
        return self.world.clock

    def state(self) -> State:
        """The state an agent would log now: the user's recent interactions and the page."""
        assert self.session is not None
        return State(history=list(self.histories.get(self.session.user, [])), context={"page": self.session.steps})

    def _observation(self) -> dict[str, Any]:
        assert self.session is not None
        recent = self.histories.get(self.session.user, [])[-HISTORY:]
        items = np.zeros(HISTORY, np.int64)
        events = np.zeros(HISTORY, np.int64)
        if recent:
            items[-len(recent):] = [self.world.index[i.item_id] + 1 for i in recent]
            events[-len(recent):] = [EVENT_CODES[i.event] for i in recent]
        return {"history_items": items, "history_events": events, "page": min(self.session.steps, self.config.max_steps)}

    def _info(self) -> dict[str, Any]:
        assert self.session is not None
        return {"state": self.state(), "user_id": self.world.user_id(self.session.user), "session_id": self.session_id}


def transitions_of(request_id: str, user_id: str, session_id: str, state: State, slate: Sequence[str],
                   feedback: Sequence[tuple[str, str | None, float | None]], ts: float,
                   propensities: Sequence[float] | None = None, policy: str | None = None,
                   model_version: int | None = None) -> list[Transition]:
    """One transition per shown item, labelled as the streams join labels them (DESIGN.md):
    reward = weighted feedback on that item, next_state = state plus this slate's feedback,
    done = the session exited (a purchased item closes at its purchase, done False)."""
    news = [Interaction(item_id=item, event=event, ts=ts) for event, item, _v in feedback if item is not None]  # type: ignore[arg-type]
    exited = any(event == "exit" for event, _i, _v in feedback)
    next_state = State(history=(list(state.history) + news)[-HISTORY:], context=state.context)
    out = []
    for position, item in enumerate(slate):
        kinds = [event for event, i, _v in feedback if i == item]
        out.append(Transition(
            transition_id=f"{request_id}:{position}", request_id=request_id, user_id=user_id, session_id=session_id,
            state=state, action=item, position=position, slate=list(slate),
            reward=float(sum(EVENT_WEIGHTS[k] for k in kinds)), reward_parts=dict(Counter(kinds)),
            next_state=next_state, done=exited and "purchase" not in kinds,
            propensity=None if propensities is None else float(propensities[position]),
            policy=policy, model_version=model_version, ts_impression=ts, ts_emitted=ts))
    return out
