"""``shelfq bench gate``: in the simulator, is a deliberately bad model version kept from serving,
and how soon is a good one promoted?

In-process, no Kafka: the shoppers of ``simulator.world``, the agent's own policy code
(``agents.policies.DQNPolicy``) serving them, transitions labelled as the join labels them
(``evaluation.offline.run_seed``), and the gate's own judgement (``evaluation.gate.judge``)
with the decisions it would write. The Kafka path (topics, agents following decisions) is what
``tests/integration/test_gate.py`` checks; here the question is the gate's verdicts.

1. **Models.** Uniform random slates serve ``logged_sessions`` sessions; three item-wise
   myopic learners train on those logs (rewards x ``reward_scale``): the first version,
   briefly (``first_steps``), the good one longer (``good_steps``), and a deliberately bad one
   on the rewards negated (``good_steps``): it ranks first what shoppers ignore.
2. **Live.** The first version is adopted and serves, explored with Boltzmann draws
   (``temperature``); every ``chunk_sessions`` sessions the gate judges. After
   ``bad_after_sessions`` the bad version is published; once it is decided, the good one.
3. **Truth.** Each version serves the same ``truth_sessions`` sessions in a copy of the world:
   its real reward per impression (of the estimated positions) and per session.

The last line of ``--json``: ``{"bad_model_promoted": false, "good_model_promoted_after_s": s,
"good_model_promoted_after_impressions": n, ...}``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np

from shelfq.agents.policies import Ask, DQNPolicy, Explorer, RandomPolicy, SlateChoice
from shelfq.bench.gate_config import GateBenchConfig
from shelfq.contracts.decisions import ModelDecision
from shelfq.contracts.events import Transition
from shelfq.evaluation.benchmark import train
from shelfq.evaluation.gate.judge import Judge
from shelfq.evaluation.offline import copy_world, run_seed
from shelfq.learner.artifact import LoadedModel, load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.simulator.world import World, WorldConfig

POLICY = "dqn"
FIRST, BAD, GOOD = 1, 2, 3


class _Serving:
    """The agent's policy with the version the gate's decisions say (swapped between chunks)."""

    def __init__(self, models: dict[int, LoadedModel], explorer: Explorer, version: int) -> None:
        self.models, self.explorer, self.name = models, explorer, POLICY
        self.policy = DQNPolicy(models[version], explorer, name=POLICY)

    def serve(self, version: int) -> None:
        self.policy.swap(self.models[version])

    def rank(self, asks: Sequence[Ask], rng: np.random.Generator, limit: int | None = None) -> list[SlateChoice]:
        return self.policy.rank(asks, rng, limit)


def _models(cfg: GateBenchConfig, world: World, say: Callable[[str], None]) -> dict[int, LoadedModel]:
    logs: list[Transition] = []
    run_seed(RandomPolicy(), 1000 + cfg.seed, cfg.logged_sessions, world=world, on_transitions=logs.extend)
    say(f"logged {len(logs)} transitions of {cfg.logged_sessions} random sessions")
    items = world.catalog_items(1_700_000_000.0)
    learner = LearnerConfig(policy=POLICY, objective="item", gamma=0.0, replay_capacity=max(len(logs), 1000),
                            batch_size=256, learning_starts=256, seed=cfg.seed)

    def scaled(sign: float) -> list[Transition]:
        return [msgspec.structs.replace(t, reward=sign * cfg.reward_scale * t.reward) for t in logs]

    out = {}
    for version, sign, steps in ((FIRST, 1.0, cfg.first_steps), (BAD, -1.0, cfg.good_steps), (GOOD, 1.0, cfg.good_steps)):
        t0 = time.monotonic()
        dqn = train(learner, scaled(sign), steps, items)
        value, headers = model_message(dqn.online, dqn.config, version)
        out[version] = load_model(value, headers.to_headers(), policy=POLICY)  # as an agent loads it
        say(f"trained v{version} ({'bad: negated rewards' if sign < 0 else 'good' if version == GOOD else 'first'}, "
            f"{steps} steps) in {time.monotonic() - t0:.0f} s")
    return out


def _truth(cfg: GateBenchConfig, world: World, model: LoadedModel, explorer: Explorer) -> dict[str, float]:
    transitions: list[Transition] = []
    figures = run_seed(DQNPolicy(model, explorer, name=POLICY), 9000 + cfg.seed, cfg.truth_sessions, world=copy_world(world),
                       on_transitions=transitions.extend)
    depth = cfg.gate.positions or 10**6
    per_impression: dict[str, float] = {}
    for t in transitions:
        if t.position < depth:
            per_impression[t.request_id] = per_impression.get(t.request_id, 0.0) + t.reward
    return {"reward_per_impression": round(float(np.mean(list(per_impression.values()))), 4),
            "reward_per_session": round(float(figures["reward_per_session"]), 4)}


def run_bench(cfg: GateBenchConfig = GateBenchConfig(), report: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.monotonic()
    gate_cfg = dataclasses.replace(cfg.gate, policies=POLICY, exploration="boltzmann", temperature=cfg.temperature)
    explorer = Explorer("boltzmann", temperature=cfg.temperature)
    world = World(WorldConfig(), seed=cfg.seed)
    models = _models(cfg, world, report)
    truth = {v: _truth(cfg, world, m, explorer) for v, m in models.items()}
    report("true figures (each version serving the same sessions): "
           + ", ".join(f"v{v} {t['reward_per_impression']:.3f}/impression" for v, t in truth.items()))
    judge = Judge(gate_cfg)
    judge.items = {item.item_id: item for item in world.catalog_items(1_700_000_000.0)}
    judge.add_model(models[FIRST])
    serving = _Serving(models, explorer, FIRST)
    decisions: list[ModelDecision] = []
    published: dict[int, tuple[float, int]] = {}  # version -> (wall time, impressions served so far)
    promoted: dict[int, tuple[float, int]] = {}
    impressions = sessions = chunk = 0

    def count(ts: list[Transition]) -> None:
        nonlocal impressions
        impressions += sum(1 for t in ts if t.position == 0)
        for t in ts:
            judge.add_transition(t)

    def judge_now() -> None:
        decision = judge.step(POLICY, time.time())
        if decision is None:
            return
        judge.record(decision)
        decisions.append(decision)
        report(f"  after {sessions} sessions: {decision.action} v{decision.version} -> serving v{decision.serving_version}"
               f"; {decision.reason}")
        if decision.action == "promote":
            promoted[decision.version] = (time.monotonic(), impressions)
        serving.serve(decision.serving_version)

    judge_now()  # adopts the first version
    while sessions < cfg.max_sessions and GOOD not in promoted:
        if sessions >= cfg.bad_after_sessions and BAD not in published:
            judge.add_model(models[BAD])
            published[BAD] = (time.monotonic(), impressions)
            report(f"  after {sessions} sessions: published v{BAD} (bad)")
        bad_decided = any(d.version == BAD and d.action in ("hold", "promote") for d in decisions)
        if bad_decided and GOOD not in published:
            judge.add_model(models[GOOD])
            published[GOOD] = (time.monotonic(), impressions)
            report(f"  after {sessions} sessions: published v{GOOD} (good)")
        run_seed(serving, 100 * cfg.seed + chunk, cfg.chunk_sessions, world=world, on_transitions=count)
        sessions, chunk = sessions + cfg.chunk_sessions, chunk + 1
        judge_now()
    good = promoted.get(GOOD)
    result: dict[str, Any] = {
        "bad_model_promoted": BAD in promoted,
        "good_model_promoted": good is not None,
        "good_model_promoted_after_s": round(good[0] - published[GOOD][0], 2) if good else None,
        "good_model_promoted_after_impressions": good[1] - published[GOOD][1] if good else None,
        "bad_model_decision": next((d.action for d in decisions if d.version == BAD), None),
        "live_sessions": sessions, "live_impressions": impressions,
        "true": {f"v{v}": t for v, t in truth.items()},
        "decisions": [{"action": d.action, "version": d.version, "serving_version": d.serving_version,
                       "reason": d.reason} for d in decisions],
        "gate": {k: v for k, v in dataclasses.asdict(gate_cfg).items() if k not in ("metrics_port", "metrics_addr")},
        "seconds": round(time.monotonic() - started, 1),
    }
    return result
