"""Policies compared in the simulator over the same shoppers and seeds, with 95% intervals.

Each seed builds the same world (catalog and shoppers) for every policy and runs the same
number of sessions; the served policy classes (``agents.policies``) choose the slates, in
micro-batches of concurrent sessions as the agent does. Per seed we get one figure per metric;
the reported interval is Student's t over the seeds' figures.

>>> mean_ci95([1.0, 2.0, 3.0])  # t(2) = 4.303
(2.0, -0.4843, 4.4843)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shelfq.agents.policies import Ask, Policy
from shelfq.contracts.events import Transition, UserState
from shelfq.simulator.env import ShopperEnv, transitions_of
from shelfq.simulator.world import World, WorldConfig

METRICS = ("reward_per_session", "ctr", "conversion", "revenue_per_session", "session_length",
           "intra_list_diversity", "catalog_coverage", "bait_share")
# Two-sided 95% Student t quantiles by degrees of freedom; between rows the smaller df's (wider)
# value is used, and beyond 30 the row of 30 (2.042, a little wider than the normal's 1.96).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and Student-t 95% interval of independent per-seed figures (rounded to 4 places)."""
    x = np.asarray(values, float)
    if len(x) == 0:
        raise ValueError("no values to average")
    m = float(x.mean())
    if len(x) == 1:
        return round(m, 4), round(m, 4), round(m, 4)
    df = len(x) - 1
    t = _T95.get(df) or next(v for k, v in sorted(_T95.items(), reverse=True) if k <= df)  # conservative between rows
    half = t * float(x.std(ddof=1)) / math.sqrt(len(x))
    return round(m, 4), round(m - half, 4), round(m + half, 4)


@dataclass
class SeedFigures:
    sessions: int = 0
    slates: int = 0
    clicks: int = 0
    converted_sessions: int = 0
    reward: float = 0.0
    revenue: float = 0.0
    same_category_pairs: float = 0.0
    bait_shown: int = 0
    items_shown: set | None = None

    def metrics(self, catalog_size: int, slate_size: int) -> dict[str, float]:
        pairs = self.slates * slate_size * (slate_size - 1) / 2
        return {
            "reward_per_session": self.reward / self.sessions,
            "ctr": self.clicks / max(1, self.slates),
            "conversion": self.converted_sessions / self.sessions,
            "revenue_per_session": self.revenue / self.sessions,
            "session_length": self.slates / self.sessions,
            "intra_list_diversity": 1.0 - self.same_category_pairs / pairs if pairs else 0.0,
            "catalog_coverage": len(self.items_shown or ()) / catalog_size,
            # Only a simulator knows this: the share of shown items that are bait.
            "bait_share": self.bait_shown / max(1, self.slates * slate_size),
        }


def run_seed(policy: Policy, seed: int, sessions: int, config: WorldConfig = WorldConfig(), slate_size: int = 10,
             concurrent: int = 64, observe: Callable[[UserState], None] | None = None,
             on_transitions: Callable[[list[Transition]], None] | None = None, world: World | None = None,
             users: Sequence[int] | None = None) -> dict[str, float]:
    """Run ``sessions`` sessions of the world of ``seed`` under ``policy``; its metrics.

    ``observe`` sees each user's history after every slate (feeds a popularity policy);
    ``on_transitions`` gets each slate's transitions labelled as the join would (training).
    ``world`` runs the sessions in a world the caller prepared (its shoppers' histories and
    interests as they are; it is changed in place) instead of a fresh one of ``seed``;
    ``users`` draws each session's shopper from these users (default: the whole population)."""
    world = World(config, seed=seed) if world is None else world
    config = world.config
    rng = np.random.default_rng([seed, 10])  # sessions: the same sequence whatever the policy does

    def start(env: ShopperEnv) -> dict:
        options = None if users is None else {"user": int(users[int(rng.integers(len(users)))])}
        return env.reset(seed=int(rng.integers(2**31)), options=options)[1]

    policy_rng = np.random.default_rng([seed, 11])  # the policy's own draws
    envs = [ShopperEnv(config, slate_size, world=world) for _ in range(min(concurrent, sessions))]
    candidates = list(world.catalog.ids)  # one list object: the catalog's vectors are cached per model
    shown: set[int] = set()
    fig = SeedFigures(items_shown=shown)
    started = 0
    live: list[tuple[ShopperEnv, dict, bool]] = []  # env, info, converted
    for env in envs:
        if started < sessions:
            live.append((env, start(env), False))
            started += 1
    request = 0
    while live:
        choices = policy.rank([Ask(info["state"], candidates, slate_size, user_id=info["user_id"])
                               for _env, info, _c in live], policy_rng)
        nxt = []
        for (env, info, converted), choice in zip(live, choices):
            action = [world.index[i] for i in choice.items]
            _obs, reward, terminated, truncated, step = env.step(action)
            request += 1
            outcome = step["outcome"]
            fig.slates += 1
            fig.reward += reward
            fig.revenue += outcome.revenue
            fig.clicks += outcome.clicked is not None
            shown.update(action)
            fig.bait_shown += int(world.catalog.bait[action].sum())
            cats = world.catalog.category[action]
            fig.same_category_pairs += float(((cats[:, None] == cats[None, :]).sum() - len(cats)) / 2)
            converted = converted or outcome.purchase
            if observe is not None:
                assert env.session is not None  # it stepped
                observe(UserState(user_id=info["user_id"], history=env.histories[env.session.user], ts=env.clock))
            if on_transitions is not None:
                on_transitions(transitions_of(f"{seed}-{request}", info["user_id"], info["session_id"], info["state"],
                                              choice.items, step["feedback"], env.clock, choice.propensities,
                                              choice.policy, choice.model_version))
            if terminated or truncated:
                fig.sessions += 1
                fig.converted_sessions += converted
                if started < sessions:
                    nxt.append((env, start(env), False))
                    started += 1
            else:
                nxt.append((env, step, converted))
        live = nxt
    return fig.metrics(config.items, slate_size)


def copy_world(world: World) -> World:
    """A deep copy of a simulator world whose histories' interactions (immutable events) are
    shared, not copied: a tenth of the time of ``copy.deepcopy`` with 2,000 full histories."""
    return copy.deepcopy(world, {id(world.histories): {user: list(h) for user, h in world.histories.items()}})


def compare(policies: dict[str, Callable[[], Policy]], seeds: Sequence[int], sessions: int,
            config: WorldConfig = WorldConfig(), slate_size: int = 10,
            observers: dict[str, Callable[[Policy], Callable[[UserState], None]]] | None = None,
            world: World | None = None, users: Sequence[int] | None = None,
            ) -> dict[str, dict[str, dict[str, object]]]:
    """``{policy: {metric: {"mean": m, "ci95": [lo, hi], "per_seed": [...]}}}``; every policy
    meets the same worlds (``seeds``). ``policies`` holds factories: each seed starts afresh.
    With ``world``, every run is in a copy of it (its shoppers' histories as they are), with
    sessions of ``users`` (``run_seed``)."""
    table: dict[str, dict[str, dict[str, object]]] = {}
    for name, make in policies.items():
        per_seed: dict[str, list[float]] = {m: [] for m in METRICS}
        for seed in seeds:
            policy = make()
            observe = observers[name](policy) if observers and name in observers else None
            prepared = None if world is None else copy_world(world)
            for metric, value in run_seed(policy, seed, sessions, config, slate_size, observe=observe, world=prepared,
                                          users=users).items():
                per_seed[metric].append(value)
        table[name] = {}
        for metric, values in per_seed.items():
            m, lo, hi = mean_ci95(values)
            table[name][metric] = {"mean": m, "ci95": [lo, hi], "per_seed": [round(v, 4) for v in values]}
    return table
