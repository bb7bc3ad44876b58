"""The learning benchmark behind ``shelfq bench policy``: does the long-term learner earn more
per session than the myopic one and than a popularity list, for shoppers the shop knows and
for new ones? No Kafka: the Gymnasium simulator and the learner's and agent's own code.

1. **Logging.** An exploring policy (uniform random slates) serves ``logged_sessions`` sessions
   of the *returning* shoppers (the first ``returning_users`` of the population); each slate is
   labelled as the streams join labels it. The shoppers' histories and drifted interests stay in
   the world, as a shop's user-state would.
2. **Training.** For each training seed, a myopic (gamma 0) and a long-term (gamma > 0) learner
   with otherwise the same settings train ``steps`` gradient steps on the same logged
   transitions. A popularity list counts the same logs.
3. **Evaluation.** For each evaluation seed, every policy serves the same sessions, greedily,
   in its own copy of the world as logging left it: ``eval_sessions`` sessions of returning
   shoppers (with their histories) and as many of shoppers never seen (the rest of the
   population, empty histories). Two oracles that read the shoppers' latent state serve them
   too (``evaluation.oracles``): a ceiling beside the learners, and in
   ``ceiling_longterm_vs_myopic`` what the long-term effect is worth in this world at best.

Figures are paired: for training seed t and evaluation seed e, ``longterm(t, e) / myopic(t, e)``
and ``longterm(t, e) / popularity(e)`` meet the same shoppers. The reported interval is
Student's t over all (t, e) pairs, so it holds training variance (the seeds' learners differ)
as well as the shoppers' (``paired_ratio``).

>>> paired_ratio([[2.0, 4.0], [3.0, 3.0]], [[1.0, 2.0], [2.0, 2.0]])
{'ratio': 1.75, 'ci95': [1.2907, 2.2093], 'pairs': 4}
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from shelfq.agents.policies import DQNPolicy, Explorer, Popularity, PopularityPolicy, RandomPolicy
from shelfq.contracts.events import Item, Transition, UserState
from shelfq.evaluation.bench_config import PolicyBenchConfig
from shelfq.evaluation.offline import METRICS, copy_world, mean_ci95, run_seed
from shelfq.evaluation.oracles import ORACLE_POLICIES, OraclePolicy
from shelfq.learner.artifact import LoadedModel, load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.simulator.world import World

POLICIES = ("random", "popularity", "myopic", "longterm")
GROUPS = ("returning", "new")
LOGGING_SEED = 1000  # the logging run's sessions; evaluation seeds are 0, 1, ...
LOGGING_TS = 1_700_000_000.0  # when the catalog was published, as the items topic stamps it


def paired_ratio(numerators: Sequence[Sequence[float]], denominators: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Mean and Student-t 95% interval of the ratios of paired figures, ``[t][e]`` against
    ``[t][e]`` (or a single row broadcast over t); over every pair."""
    num = np.asarray(numerators, float)
    den = np.broadcast_to(np.asarray(denominators, float), num.shape)
    ratios = (num / np.maximum(den, 1e-12)).ravel()
    m, lo, hi = mean_ci95(ratios.tolist())
    return {"ratio": m, "ci95": [lo, hi], "pairs": int(ratios.size)}


class _Logs:
    """The logging run's transitions and the popularity counts of its user-states."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.states: list[UserState] = []

    def popularity(self) -> Popularity:
        counts = Popularity()
        for state in self.states:
            counts.observe(state)
        return counts


def _log(cfg: PolicyBenchConfig, world: World) -> _Logs:
    logs = _Logs()
    run_seed(RandomPolicy(), LOGGING_SEED, cfg.logged_sessions, slate_size=cfg.slate_size, world=world,
             users=range(cfg.returning_users), observe=logs.states.append, on_transitions=logs.transitions.extend)
    return logs


def train(config: LearnerConfig, transitions: Sequence[Transition], steps: int, items: Sequence[Item] = ()) -> DQN:
    """A learner of ``config`` trained ``steps`` steps on ``transitions`` (all in replay first),
    knowing the catalog ``items`` as the learner knows them from the ``items`` topic."""
    dqn = DQN(config)
    dqn.set_items(items)
    for start in range(0, len(transitions), 4096):
        chunk = transitions[start:start + 4096]
        dqn.add_rows(dqn.features.rows(chunk), [t.transition_id for t in chunk], [t.slate for t in chunk],
                     [t.action for t in chunk])
    for _ in range(steps):
        dqn.train_step(dqn.sample())
    return dqn


def _served(dqn: DQN) -> LoadedModel:
    """The model as an agent loads it from the models topic (the same bytes, the same loader)."""
    value, headers = model_message(dqn.online, dqn.config, 1)
    return load_model(value, headers.to_headers())


def _greedy_maker(model: LoadedModel) -> Callable[[World], DQNPolicy]:
    """What serves ``model`` greedily in any world."""
    return lambda _world: DQNPolicy(model, Explorer("greedy"), name=model.headers.policy)


def _evaluate(make: Callable[[World], Any], cfg: PolicyBenchConfig, world: World, seed: int, group: str,
              observe: Callable[[Any], Callable[[UserState], None]] | None = None) -> dict[str, float]:
    """One policy's figures on one evaluation seed; ``make`` gets the world the sessions run in
    (the oracles read it)."""
    users = range(cfg.returning_users) if group == "returning" else range(cfg.returning_users, cfg.world.users)
    sessions_world = copy_world(world)
    policy = make(sessions_world)
    return run_seed(policy, seed, cfg.eval_sessions, slate_size=cfg.slate_size, world=sessions_world,
                    users=users, observe=observe(policy) if observe is not None else None)


def run_bench(cfg: PolicyBenchConfig = PolicyBenchConfig(), report: Callable[[str], None] = print) -> dict[str, Any]:
    """Log, train, evaluate; the figures (see the module docstring)."""
    started = time.perf_counter()
    world = World(cfg.world, seed=0)
    logs = _log(cfg, world)
    report(f"logged {cfg.logged_sessions} random sessions of {cfg.returning_users} shoppers: "
           f"{len(logs.transitions)} transitions ({time.perf_counter() - started:.0f} s)")
    models: dict[str, list[LoadedModel]] = {"myopic": [], "longterm": []}
    train_s, device = 0.0, "cpu"
    for t in range(cfg.training_seeds):
        for name, gamma in (("myopic", 0.0), ("longterm", cfg.gamma)):
            t0 = time.perf_counter()
            config = replace(cfg.learner, gamma=gamma, seed=t, policy=f"bench-{name}", slate_size=cfg.slate_size)
            dqn = train(config, logs.transitions, cfg.steps, world.catalog_items(LOGGING_TS))
            device = str(dqn.device)
            models[name].append(_served(dqn))
            train_s += time.perf_counter() - t0
            report(f"trained {name} seed {t}: {cfg.steps} steps in {time.perf_counter() - t0:.0f} s")
    counts = logs.popularity()
    makers: dict[str, list[Callable[[World], Any]]] = {
        "random": [lambda _w: RandomPolicy()],
        "popularity": [lambda _w: PopularityPolicy(copy.deepcopy(counts), Explorer("greedy"))],
        **{name: [_greedy_maker(m) for m in models[name]] for name in ("myopic", "longterm")},
        **{name: [functools.partial(OraclePolicy, name=name)] for name in ORACLE_POLICIES},
    }
    feeds_popularity = {"popularity": lambda policy: policy.popularity.observe}
    result: dict[str, Any] = {}
    for group in GROUPS:
        # figures[policy][t][e][metric]; random and popularity have one "training seed"
        figures: dict[str, list[list[dict[str, float]]]] = {}
        for name, makes in makers.items():
            figures[name] = [[_evaluate(make, cfg, world, e, group, feeds_popularity.get(name))
                              for e in range(cfg.eval_seeds)] for make in makes]
        reward = {name: [[f["reward_per_session"] for f in row] for row in rows] for name, rows in figures.items()}
        policies: dict[str, dict[str, Any]] = {}
        for name, rows in figures.items():
            flat = [f for row in rows for f in row]
            summaries = {metric: mean_ci95([f[metric] for f in flat]) for metric in METRICS}
            policies[name] = {metric: m for metric, (m, _lo, _hi) in summaries.items()}
            policies[name]["ci95"] = {metric: [lo, hi] for metric, (_m, lo, hi) in summaries.items()}
        result[group] = {
            "longterm_vs_myopic": paired_ratio(reward["longterm"], reward["myopic"]),
            "longterm_vs_popularity": paired_ratio(reward["longterm"], reward["popularity"]),
            "myopic_vs_popularity": paired_ratio(reward["myopic"], reward["popularity"]),
            # the same ratio between the oracles: how much the long-term effect is worth here
            "ceiling_longterm_vs_myopic": paired_ratio(reward["oracle-quality"], reward["oracle-myopic"]),
            "policies": policies,
        }
        report(f"{group}: " + ", ".join(f"{n} {policies[n]['reward_per_session']:.3f}" for n in POLICIES + ORACLE_POLICIES)
               + f"; long-term / myopic {result[group]['longterm_vs_myopic']['ratio']:.3f} "
               f"{result[group]['longterm_vs_myopic']['ci95']}, long-term / popularity "
               f"{result[group]['longterm_vs_popularity']['ratio']:.3f} {result[group]['longterm_vs_popularity']['ci95']}")
    result.update({
        "training_seeds": cfg.training_seeds, "eval_seeds": cfg.eval_seeds, "eval_sessions": cfg.eval_sessions,
        "logged_sessions": cfg.logged_sessions, "logged_transitions": len(logs.transitions), "steps": cfg.steps,
        "gamma": cfg.gamma, "objective": cfg.learner.objective, "device": device,
        "train_seconds": round(train_s, 1), "seconds": round(time.perf_counter() - started, 1),
    })
    return result

