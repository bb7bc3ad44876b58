"""Offline check, not part of shelfq: does valuing a slate as a whole beat ranking items by Q?

In the Gymnasium simulator (no Kafka), random slates are logged for N sessions and labelled as
the join labels them. Five networks of the learner's own DQN code train on them:
- item-wise DQN, gamma 0 and 0.9: what shelfq serves today (rank by Q(s, a));
- a click model: the same network, gamma 0, reward = 1 if the item was clicked;
- Q-bar, gamma 0 and 0.9, trained only on clicked items: the value of an item given a click
  (its gamma-0.9 target bootstraps with max over Q-bar, a crude stand-in for SlateQ's slate value).
The slate-aware policy builds each slate greedily to maximise sum(v Q-bar) / (1 + sum(v)), v the
click model's odds (a multinomial logit with a no-click option), so an item that takes clicks
from better ones is left out. Every policy then serves the same shoppers, 5 seeds x 500 sessions.

    .venv/bin/python experiments/slate_aware_check.py 15000    # ~8 min on 2 cores
"""
import sys
import time

import numpy as np
import torch

from agents.policies import DQNPolicy, Explorer, RandomPolicy, SlateChoice
from contracts.events import Transition
from evaluation.offline import compare, run_seed
from learner.artifact import LoadedModel, load_model, model_message
from learner.config import LearnerConfig
from learner.dqn import DQN


def learner(gamma: float, name: str) -> DQN:
    return DQN(LearnerConfig(gamma=gamma, policy=name, replay_ratio=2.0, learning_starts=256))


def train(dqn: DQN, transitions: list[Transition]) -> None:
    rows = dqn.features.rows(transitions)
    dqn.add_rows(rows, [t.transition_id for t in transitions], [t.slate for t in transitions], [t.action for t in transitions])
    dqn.train_due()


def as_click(t: Transition) -> Transition:
    """The same transition with reward 1 if the item was clicked, else 0 (a click model)."""
    fields = {f: getattr(t, f) for f in t.__struct_fields__}
    return Transition(**{**fields, "reward": float(bool(t.reward_parts.get("click")))})


def loaded(dqn: DQN) -> LoadedModel:
    value, headers = model_message(dqn.online, dqn.config, 1)
    return load_model(value, headers.to_headers())


class SlateAware:
    """Greedy assortment: add the item that raises sum(v q) / (1 + sum(v)) most, ten times."""

    name = "slate-aware"

    def __init__(self, qbar: DQN, click: DQN) -> None:
        self.qbar = DQNPolicy(loaded(qbar), Explorer("greedy"))
        self.click = DQNPolicy(loaded(click), Explorer("greedy"))

    def rank(self, asks, rng, limit=None):
        out = []
        for ask, q, p in zip(asks, self.qbar.scores(asks), self.click.scores(asks)):
            p = np.clip(p, 1e-4, 0.999)
            v = p / (1 - p)  # the logit model's weight of each item, from its click probability
            chosen: list[int] = []
            num, den = 0.0, 1.0  # 1: the no-click option
            for _ in range(ask.slate_size):
                value = (num + v * q) / (den + v)
                value[chosen] = -np.inf
                j = int(np.argmax(value))
                chosen.append(j)
                num, den = num + v[j] * q[j], den + v[j]
            out.append(SlateChoice([ask.candidates[j] for j in chosen], [float(q[j]) for j in chosen],
                                   [1.0] * len(chosen), self.name, None))
        return out


def main(sessions: int) -> None:
    torch.set_num_threads(2)
    item = {g: learner(g, f"item-{g}") for g in (0.0, 0.9)}
    qbar = {g: learner(g, f"qbar-{g}") for g in (0.0, 0.9)}
    click = learner(0.0, "click")

    def feed(transitions: list[Transition]) -> None:
        for dqn in item.values():
            train(dqn, transitions)
        clicked = [t for t in transitions if t.reward_parts.get("click")]
        if clicked:
            for dqn in qbar.values():
                train(dqn, clicked)
        train(click, [as_click(t) for t in transitions])

    started = time.time()
    run_seed(RandomPolicy(), seed=100, sessions=sessions, on_transitions=feed)  # the logging run
    print(f"trained on {sessions} random sessions in {time.time() - started:.0f} s")
    policies = {"random": RandomPolicy,
                "item_myopic": lambda: DQNPolicy(loaded(item[0.0]), Explorer("greedy")),
                "item_longterm": lambda: DQNPolicy(loaded(item[0.9]), Explorer("greedy")),
                "slate_myopic": lambda: SlateAware(qbar[0.0], click),
                "slate_longterm": lambda: SlateAware(qbar[0.9], click)}
    for name, row in compare(policies, seeds=range(5), sessions=500).items():
        print(f"{name:15s}", {m: (row[m]["mean"], row[m]["ci95"]) for m in ("reward_per_session", "session_length", "bait_share")})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15000)
