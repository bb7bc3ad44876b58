"""The simulator as a shop frontend on the real topics (``shelfq simulate``).

It publishes the catalog to ``items``, then runs many shopper sessions concurrently (asyncio):
each session sends a request, awaits the agent's slate (after ``slate_timeout_s`` it shows a
random slate instead, counted, with its state and propensities inline so the join can still
use it), publishes the impression and the shopper's feedback, pauses ``think_s``, and goes on
until the shopper exits (an ``exit`` event). It stops after ``sessions`` sessions or
``duration_s`` seconds, whichever comes first, and finishes the sessions in progress.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import Feedback, Impression, Interaction, Request, State
from shelfq.contracts.settings import Settings
from shelfq.frontend.client import ShopClient
from shelfq.simulator.env import EVENT_WEIGHTS, HISTORY, feedback_of
from shelfq.simulator.metrics import SimulatorMetrics
from shelfq.simulator.world import World, WorldConfig


@dataclass(frozen=True)
class SimulateConfig:
    """How much traffic ``shelfq simulate`` drives."""

    sessions: int = 0
    """Sessions to run (0: no limit, stop after ``duration_s``)."""
    duration_s: float = 60.0
    """Stop starting sessions after this many seconds (0: no limit, stop after ``sessions``)."""
    concurrency: int = 32
    """Sessions in progress at once."""
    think_s: float = 0.2
    """Pause between a shopper's feedback and their next request (lets user-state catch up)."""
    slate_timeout_s: float = 1.0
    """How long a session waits for its slate before showing a random one."""
    slate_size: int = 10
    """Items per requested slate."""
    seed: int = 0
    """Seeds the shoppers and their choices (the catalog is fixed by the world's catalog_seed)."""
    users: int = 0
    """Sessions draw their shoppers from the first this many of the population (0: all of it);
    the others stay new to the shop (the demo compares policies on them afterwards)."""
    publish_catalog: bool = True
    """Publish the catalog to ``items`` first."""
    metrics_port: int = 9104
    """Port of /metrics (0 turns the endpoint off)."""

    def __post_init__(self) -> None:
        if self.sessions < 0 or self.duration_s < 0:
            raise ConfigError("simulate: sessions and duration_s must be >= 0")
        if self.sessions == 0 and self.duration_s == 0:
            raise ConfigError("simulate: set sessions or duration_s (or both); with neither it would never stop")
        if self.concurrency < 1 or not 1 <= self.slate_size <= 100:
            raise ConfigError("simulate: concurrency must be >= 1 and slate_size in 1..100")
        if self.think_s < 0 or self.slate_timeout_s <= 0:
            raise ConfigError("simulate: think_s must be >= 0 and slate_timeout_s > 0")
        if self.users < 0:
            raise ConfigError("simulate: users must be >= 0 (0: the whole population)")


class SessionRecord(NamedTuple):
    """One finished session, as the shop saw it: for per-arm figures with intervals."""

    user: int
    arm: str | None
    """The experiment arm of its slates (the last one named; None if no slate named one)."""
    ended: float
    """time.monotonic() at its end."""
    slates: int
    clicks: int
    purchases: int
    reward: float
    revenue: float


@dataclass
class SimulationStats:
    """Running totals, readable while the simulation runs (progress lines, the demo)."""

    sessions: int = 0
    requests: int = 0
    timeouts: int = 0
    slates: int = 0
    clicks: int = 0
    purchases: int = 0
    reward: float = 0.0
    revenue: float = 0.0
    events_sent: int = 0
    model_version: int | None = None
    by_policy: dict[str, list[float]] = field(default_factory=dict)  # policy -> [slates, reward]
    session_log: list[SessionRecord] = field(default_factory=list)  # every finished session, in order

    @property
    def ctr(self) -> float:
        return self.clicks / self.slates if self.slates else 0.0

    @property
    def reward_per_session(self) -> float:
        return self.reward / self.sessions if self.sessions else 0.0

    def summary(self) -> dict[str, float | int | dict[str, int] | None]:
        return {"sessions": self.sessions, "requests": self.requests, "slate_timeouts": self.timeouts,
                "ctr": round(self.ctr, 4), "reward_per_session": round(self.reward_per_session, 4),
                "purchases": self.purchases, "revenue": round(self.revenue, 2), "events_sent": self.events_sent,
                "model_version": self.model_version,
                "slates_by_policy": {p: int(v[0]) for p, v in sorted(self.by_policy.items())}}


class Simulation:
    """Drives simulated shoppers through the real topics with a ``ShopClient``."""

    def __init__(self, settings: Settings, config: SimulateConfig = SimulateConfig(),
                 world: WorldConfig = WorldConfig(), metrics: SimulatorMetrics | None = None) -> None:
        if config.slate_size > world.items:
            raise ConfigError(f"simulate: slate_size {config.slate_size} exceeds the catalog ({world.items} items)")
        if config.users > world.users:
            raise ConfigError(f"simulate: users {config.users} exceeds the population ({world.users} shoppers)")
        self.settings, self.config = settings, config
        self.world = World(world, seed=config.seed)
        self.metrics = metrics or SimulatorMetrics()
        self.stats = SimulationStats()
        self.rng = np.random.default_rng([config.seed, 20])
        self.run_id = uuid.uuid4().hex[:8]
        self.histories: dict[int, list[Interaction]] = {}  # the frontend's own view, for inline states
        self._next = 0

    def publish_catalog(self, client: ShopClient) -> int:
        items = self.world.catalog_items(time.time())
        for item in items:
            client.send(item)
        client.flush()
        return len(items)

    async def run(self) -> SimulationStats:
        cfg = self.config
        with ShopClient(self.settings) as client:
            if cfg.publish_catalog:
                self.publish_catalog(client)
            started, deadline = 0, time.monotonic() + cfg.duration_s if cfg.duration_s else float("inf")
            running: set[asyncio.Task] = set()

            def more() -> bool:
                return (cfg.sessions == 0 or started < cfg.sessions) and time.monotonic() < deadline

            while more() or running:
                while more() and len(running) < cfg.concurrency:
                    user = int(self.rng.integers(cfg.users or self.world.config.users))
                    running.add(asyncio.create_task(self._session(client, user, started)))
                    started += 1
                self.metrics.active_sessions.set(len(running))
                done, running = await asyncio.wait(running, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a failed session (a broker error) stops the simulation
                client.producer.poll(0)  # delivery reports; never blocks
            self.metrics.active_sessions.set(0)
        return self.stats

    async def _session(self, client: ShopClient, user: int, n: int) -> None:
        cfg, world, stats, m = self.config, self.world, self.stats, self.metrics
        session = world.start_session(user, seed=n)
        user_id, session_id = world.user_id(user), f"{self.run_id}-s{n}"
        history = self.histories.setdefault(user, [])
        arm: str | None = None
        slates = clicks = purchases = 0
        reward_sum = revenue = 0.0
        while not session.over:
            self._next += 1
            request_id = f"{self.run_id}-r{self._next}"
            context: dict[str, str | int | float] = {"page": session.steps}
            sent = time.monotonic()
            slate = await client.slate(Request(request_id=request_id, user_id=user_id, session_id=session_id,
                                               ts=time.time(), slate_size=cfg.slate_size, context=context), cfg.slate_timeout_s)
            stats.requests += 1
            known = slate is not None and all(i in world.index for i in slate.items)
            if known:
                assert slate is not None
                m.slate_wait.observe(time.monotonic() - sent)
                m.requests.labels("slate").inc()
                items, policy = list(slate.items), slate.policy
                arm = slate.arm or arm
                if slate.model_version is not None:
                    stats.model_version = max(stats.model_version or 0, slate.model_version)
                    m.model_version.set(stats.model_version)
                impression = Impression(request_id=request_id, user_id=user_id, session_id=session_id, ts=time.time(), items=items)
            else:  # no slate in time (or one naming items this shop does not have): a random one
                stats.timeouts += 1
                m.requests.labels("timeout").inc()
                picks = self.rng.choice(world.config.items, cfg.slate_size, replace=False)
                items, policy = [world.catalog.ids[j] for j in picks], "random"
                n_items = world.config.items
                impression = Impression(request_id=request_id, user_id=user_id, session_id=session_id, ts=time.time(),
                                        items=items, state=State(history=history[-HISTORY:], context=context),
                                        propensities=[1.0 / (n_items - k) for k in range(cfg.slate_size)], policy=policy)
            client.send(impression)
            outcome = session.respond([world.index[i] for i in items])
            feedback = feedback_of(outcome, world.catalog.ids)
            if outcome.truncated:
                feedback.append(("exit", None, None))  # the visit ends here for the frontend too
            now = time.time()
            for event, item, value in feedback:
                client.send(Feedback(request_id=request_id, user_id=user_id, session_id=session_id, ts=now,
                                     event=event, item_id=item, value=value))  # type: ignore[arg-type]
                m.feedback.labels(event).inc()
                if item is not None:
                    history.append(Interaction(item_id=item, event=event, ts=now))  # type: ignore[arg-type]
            del history[:-HISTORY]
            reward = float(sum(EVENT_WEIGHTS.get(e, 0.0) for e, _i, _v in feedback))
            stats.slates += 1
            stats.events_sent += 2 + len(feedback)
            stats.clicks += outcome.clicked is not None
            stats.purchases += outcome.purchase
            stats.reward += reward
            stats.revenue += outcome.revenue
            per = stats.by_policy.setdefault(policy, [0, 0.0])
            per[0] += 1
            per[1] += reward
            m.slates.labels(policy).inc()
            m.reward.labels(policy).inc(reward)
            m.revenue.inc(outcome.revenue)
            slates, clicks, purchases = slates + 1, clicks + (outcome.clicked is not None), purchases + outcome.purchase
            reward_sum, revenue = reward_sum + reward, revenue + outcome.revenue
            if not session.over and cfg.think_s:
                await asyncio.sleep(cfg.think_s)
        stats.sessions += 1
        stats.session_log.append(SessionRecord(user, arm, time.monotonic(), slates, clicks, purchases, reward_sum, revenue))
        m.sessions.inc()
