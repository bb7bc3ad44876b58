"""Offline check, not part of shelfq: does SlateQ beat ranking items by Q, and does a long-term
SlateQ beat a myopic one?

In the Gymnasium simulator (no Kafka), random slates are logged for N sessions and labelled as
the join labels them. Four learners of shelfq's own code train on the same transitions, each
for the same number of steps: the item-wise DQN (``objective="item"``) and SlateQ
(``objective="slateq"``: value given a click, a multinomial-logit click model, slates built to
maximise their value), each with gamma 0 and 0.9. Every policy then serves the same shoppers,
greedily, 5 seeds x 500 sessions.

    .venv/bin/python experiments/slate_aware_check.py 15000    # ~7 min on 2 cores
"""
import sys
import time

import torch

from shelfq.agents.policies import DQNPolicy, Explorer, RandomPolicy
from shelfq.contracts.events import Transition
from shelfq.evaluation.offline import compare, run_seed
from shelfq.learner.artifact import LoadedModel, load_model, model_message
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN


def learner(objective: str, gamma: float) -> DQN:
    return DQN(LearnerConfig(objective=objective, gamma=gamma, policy=f"{objective}-{gamma}", replay_ratio=2.0,
                             replay_capacity=1_000_000))


def loaded(dqn: DQN) -> LoadedModel:
    value, headers = model_message(dqn.online, dqn.config, 1)
    return load_model(value, headers.to_headers())


def main(sessions: int) -> None:
    torch.set_num_threads(2)
    learners = {f"{objective}_{'longterm' if gamma else 'myopic'}": learner(objective, gamma)
                for objective in ("item", "slateq") for gamma in (0.0, 0.9)}

    def feed(transitions: list[Transition]) -> None:
        for dqn in learners.values():
            rows = dqn.features.rows(transitions)
            dqn.add_rows(rows, [t.transition_id for t in transitions], [t.slate for t in transitions],
                         [t.action for t in transitions])
            dqn.train_due()

    started = time.time()
    run_seed(RandomPolicy(), seed=100, sessions=sessions, on_transitions=feed)  # the logging run
    print(f"trained on {sessions} random sessions in {time.time() - started:.0f} s "
          f"({learners['slateq_myopic'].step} steps each)")
    policies = {"random": RandomPolicy}
    policies.update({name: (lambda d=dqn: DQNPolicy(loaded(d), Explorer("greedy"))) for name, dqn in learners.items()})
    for name, row in compare(policies, seeds=range(5), sessions=500).items():
        print(f"{name:16s}", {m: (row[m]["mean"], row[m]["ci95"]) for m in ("reward_per_session", "session_length", "bait_share")})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15000)
