"""Oracle policies for the learning benchmark: what a policy that read the shoppers' minds
would earn in the same run, so that the learners' figures have a ceiling beside them.

Both know each shopper's interests and price sensitivity and each item's quality (the
simulator's latent state, ``simulator.oracles.item_values``) and fill a slate greedily, one
position at a time, with the item that makes the slate's expected immediate reward the
largest under the world's own choice model (SlateQ's assortment rule with true values):

- ``oracle-myopic`` maximises this slate's reward: what a perfect myopic learner approaches;
- ``oracle-quality`` does the same with items of quality >= 0.5 only: giving up clicks on
  disappointing items keeps shoppers longer, the long-term effect a learner with gamma > 0
  is meant to find (a lower bound on the long-term optimum, not the optimum).

They ignore the in-session boredom term (a slate shows each item once anyway), and they see
each request's shopper through ``Ask.user_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shelfq.agents.policies import Ask, SlateChoice
from shelfq.simulator.oracles import item_values
from shelfq.simulator.world import World

ORACLE_POLICIES = ("oracle-myopic", "oracle-quality")
QUALITY_FLOOR = 0.5


class OraclePolicy:
    """A ``Policy`` that builds each slate from the world's latent values (see the module)."""

    def __init__(self, world: World, name: str) -> None:
        if name not in ORACLE_POLICIES:
            raise ValueError(f"oracle must be one of {', '.join(ORACLE_POLICIES)}, not {name!r}")
        self.world, self.name = world, name

    def rank(self, asks: Sequence[Ask], rng: np.random.Generator, limit: int | None = None) -> list[SlateChoice]:
        return [self._slate(ask) for ask in asks]

    def _slate(self, ask: Ask) -> SlateChoice:
        if ask.user_id is None:
            raise ValueError("an oracle needs each ask's user_id")
        w = self.world
        attraction, reward = item_values(w, w.user_of(ask.user_id))
        idx = np.array([w.index[i] for i in ask.candidates])
        v, r = attraction[idx], reward[idx]
        open_ = np.ones(len(idx), bool) if ask.allowed is None else ask.allowed.copy()
        if self.name == "oracle-quality" and (open_ & (w.catalog.quality[idx] >= QUALITY_FLOOR)).sum() >= ask.slate_size:
            open_ &= w.catalog.quality[idx] >= QUALITY_FLOOR
        num, den, chosen = 0.0, 1.0, []
        for position in range(ask.slate_size):
            vp = v * np.exp(-w.config.position_decay * position)
            gains = np.where(open_, (num + vp * r) / (den + vp), -np.inf)
            best = int(np.argmax(gains))
            chosen.append(best)
            open_[best] = False
            num, den = num + vp[best] * r[best], den + vp[best]
        return SlateChoice([ask.candidates[j] for j in chosen], [float(v[j] * r[j]) for j in chosen],
                           [1.0] * len(chosen), self.name, None)
