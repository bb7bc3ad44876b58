"""Organic impressions (``contracts.events.ORGANIC``: an item the shopper reached without a
recommendation) teach the learner's values, not its click model."""

from __future__ import annotations

import msgspec

import torch

from shelfq.contracts.events import ORGANIC
from shelfq.learner.config import LearnerConfig
from shelfq.learner.dqn import DQN
from shelfq.learner.synthetic import bait_or_gem_slates
from tests.unit.test_learner import SMALL


def test_rows_mark_organic_impressions_as_not_chosen() -> None:
    data = bait_or_gem_slates(4, seed=0)
    organic = [msgspec.structs.replace(t, policy=ORGANIC) for t in data]
    dqn = DQN(LearnerConfig(**SMALL))
    assert dqn.features.rows(data)["chosen"].all()
    assert not dqn.features.rows(organic)["chosen"].any()


def test_the_click_head_learns_nothing_from_organic_rows_but_the_values_do() -> None:
    organic = [msgspec.structs.replace(t, policy=ORGANIC) for t in bait_or_gem_slates(400, seed=1)]
    dqn = DQN(LearnerConfig(**SMALL))
    for t in organic:
        dqn.add(t)
    click_head = [p.detach().clone() for p in dqn.online.click.parameters()]
    value_head = [p.detach().clone() for p in dqn.online.value.parameters()]
    for _ in range(5):
        dqn.train_step(dqn.sample())
    assert all(torch.equal(a, b) for a, b in zip(click_head, dqn.online.click.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(value_head, dqn.online.value.parameters()))
