"""n-step targets along a session (``learner.sessions``): rows of a session's slates are linked
in impression order, through ingestion's arrays and the learner's own replay, and a sampled
row's target adds the next slates' rewards and exits before it bootstraps."""

from __future__ import annotations

import numpy as np
import pytest

from shelfq.contracts.events import Interaction, State
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.sessions import bootstrap
from shelfq.simulator.env import transitions_of

SLATE = ["a", "b", "c"]


def _slate(request: str, session: str, ts: float, clicked: str | None, exit_: bool = False) -> list:
    """One slate's transitions as the join labels them: a click (1.0) on ``clicked``, if any."""
    feedback = [("click", clicked, None)] if clicked else []
    if exit_:
        feedback.append(("exit", None, None))
    state = State(history=[Interaction(item_id="z", event="click", ts=ts - 1)])
    return transitions_of(request, "u1", session, state, SLATE, feedback, ts)


def _learner(n_step: int, capacity: int = 1000, gamma: float = 0.5) -> DQN:
    return DQN(LearnerConfig(n_step=n_step, gamma=gamma, replay_capacity=capacity, batch_size=4, learning_starts=4,
                             hash_buckets=64, embedding_dim=4, hidden_dim=4, history_length=2, slate_size=3))


def _add(dqn: DQN, transitions: list) -> None:
    dqn.add_rows(dqn.features.rows(transitions), [t.transition_id for t in transitions],
                 [t.slate for t in transitions], [t.action for t in transitions])


def test_each_slate_rows_lead_to_the_next_slates_clicked_row() -> None:
    dqn = _learner(n_step=2)
    _add(dqn, _slate("r1", "s1", 10.0, clicked="a"))          # rows 0-2
    _add(dqn, _slate("q1", "s2", 11.0, clicked=None))         # rows 3-5: another session
    # r2's clicked row (b, row 7) arrives after its other rows: the links move to it
    late = _slate("r2", "s1", 12.0, clicked="b")
    _add(dqn, [late[0], late[2]])                              # rows 6, 7
    _add(dqn, [late[1]])                                       # row 8, clicked
    successors = dqn.replay.arrays["successors"][:9].tolist()
    assert successors[:3] == [8, 8, 8]
    assert successors[3:] == [-1] * 6


def test_one_step_learner_keeps_no_links() -> None:
    dqn = _learner(n_step=1)
    _add(dqn, _slate("r1", "s1", 10.0, clicked="a") + _slate("r2", "s1", 12.0, clicked="b"))
    assert (dqn.replay.arrays["successors"][:6] == -1).all()


def test_late_rows_of_an_older_slate_are_not_linked_backwards() -> None:
    dqn = _learner(n_step=2)
    _add(dqn, _slate("r2", "s1", 12.0, clicked=None))
    _add(dqn, _slate("r1", "s1", 10.0, clicked="a"))  # an earlier impression, arriving later
    assert (dqn.replay.arrays["successors"][:6] == -1).all()


@pytest.mark.parametrize("n_step", [1, 2, 3])
def test_targets_add_the_next_slates_rewards_and_exits(n_step: int) -> None:
    dqn = _learner(n_step=n_step, gamma=0.5)
    _add(dqn, _slate("r1", "s1", 10.0, clicked="a"))
    _add(dqn, _slate("r2", "s1", 11.0, clicked="b"))
    _add(dqn, _slate("r3", "s1", 12.0, clicked="c", exit_=True))
    rows = np.array([0, 3, 6])  # the first row of each slate
    b = bootstrap(dqn.replay.arrays, dqn.replay.capacity, rows, 0.5, n_step)
    if n_step == 1:
        assert b.reward.tolist() == [0.0, 0.0, 0.0] and b.discount.tolist() == [0.5, 0.5, 0.0]
        assert b.rows.tolist() == [0, 3, 6]
    elif n_step == 2:
        # r1 -> r2's click (reward 1, not done); r2 -> r3's click (reward 1, the session ends)
        assert b.reward.tolist() == [0.5, 0.5, 0.0] and b.discount.tolist() == [0.25, 0.0, 0.0]
        assert b.rows.tolist() == [4, 8, 6]
    else:
        assert b.reward.tolist() == [0.75, 0.5, 0.0] and b.discount.tolist() == [0.0, 0.0, 0.0]
        assert b.rows.tolist() == [8, 8, 6]


def test_n_step_trains_and_its_replay_restores_from_a_checkpoint_without_links() -> None:
    dqn = _learner(n_step=2)
    for k in range(4):
        _add(dqn, _slate(f"r{k}", "s1", 10.0 + k, clicked=SLATE[k % 3], exit_=k == 3))
    stats = dqn.train_step(dqn.sample())
    assert np.isfinite(stats.loss)
    old = {k: v for k, v in dqn.replay.state_dict().items() if k != "successors"}
    fresh = _learner(n_step=2)
    fresh.replay.load_state_dict(old)
    assert (fresh.replay.arrays["successors"] == -1).all()
    assert fresh.replay.added == dqn.replay.added
