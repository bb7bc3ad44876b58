"""Offline check, not part of shelfq: one learner setting against the defaults, on
``shelfq bench policy``'s own steps, for one training seed (a quick look before a full bench).

The benchmark's logged sessions (``evaluation.benchmark``) train a myopic and a long-term
learner with the learner settings given as JSON (fields of ``LearnerConfig``); each serves the
benchmark's returning shoppers greedily, 2 evaluation seeds. Prints reward per session, session
length, bait share, share of shown items below quality 0.5 and CTR. The README's one-seed rows
of the policy bench come from it, e.g.

    .venv/bin/python experiments/policy_variant.py '{"next_clicks": 16}'   # ~4 min a learner, 2 cores
    SEED=1 ONLY=longterm .venv/bin/python experiments/policy_variant.py '{}'
"""
import json
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from shelfq.agents.policies import DQNPolicy, Explorer
from shelfq.evaluation.bench_config import PolicyBenchConfig
from shelfq.evaluation.benchmark import LOGGING_TS, _log, _served, train
from shelfq.evaluation.offline import copy_world, run_seed
from shelfq.simulator.world import World

torch.set_num_threads(1)
FIGURES = ("reward_per_session", "session_length", "bait_share", "lowq_share", "ctr")


class Recording:
    """A policy that remembers the catalog rows of every item it shows."""

    def __init__(self, policy, world) -> None:
        self.policy, self.world, self.shown = policy, world, []

    def rank(self, asks, rng, limit=None):
        out = self.policy.rank(asks, rng, limit)
        for choice in out:
            self.shown.extend(self.world.index[i] for i in choice.items)
        return out


def main() -> None:
    learner = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    cfg = PolicyBenchConfig()
    cfg = replace(cfg, learner=replace(cfg.learner, **learner))
    world = World(cfg.world, seed=0)
    logs = _log(cfg, world)
    quality = world.catalog.quality
    for name, gamma in (("myopic", 0.0), ("longterm", cfg.gamma)):
        if name not in os.environ.get("ONLY", "myopic longterm"):
            continue
        started = time.time()
        config = replace(cfg.learner, gamma=gamma, seed=int(os.environ.get("SEED", 0)), policy=f"bench-{name}",
                         slate_size=cfg.slate_size)
        model = _served(train(config, logs.transitions, cfg.steps, world.catalog_items(LOGGING_TS)))
        runs = []
        for seed in range(2):
            policy = Recording(DQNPolicy(model, Explorer("greedy"), name=name), world)
            run = run_seed(policy, seed, cfg.eval_sessions, slate_size=10, world=copy_world(world),
                           users=range(cfg.returning_users))
            run["lowq_share"] = float((quality[policy.shown] < 0.5).mean())
            runs.append(run)
        print(name, round(time.time() - started), {k: round(float(np.mean([r[k] for r in runs])), 3) for k in FIGURES},
              flush=True)


if __name__ == "__main__":
    main()
