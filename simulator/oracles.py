"""Oracle policies that read the shoppers' latent state: what the simulator allows at best.

They show that in this world click-greedy is not optimal over a session, with no learner
involved (``tests/unit/test_simulator.py``). Print their figures with::

    .venv/bin/python -m shelfq.simulator.oracles
"""

from __future__ import annotations

import numpy as np

from shelfq.simulator.world import Session, World, WorldConfig

ORACLES = ("click-greedy", "quality-aware")


def item_values(world: World, user: int, clicks: dict[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """By the world's own formulas, for shopper ``user`` with ``clicks`` earlier this session:
    each catalog item's attraction against not clicking (its logit weight at the top position)
    and its expected immediate reward given a click (click 1, add_to_cart 2, purchase 5)."""
    c, shopper, cfg = world.catalog, world.shoppers[user], world.config
    log_price = np.log(c.price / world.median_price)
    boredom = cfg.boredom * np.array([clicks.get(j, 0) for j in range(cfg.items)]) if clicks else 0.0
    attraction = np.exp(shopper.interest[c.category] + c.appeal - shopper.price_sensitivity * log_price - boredom
                        - cfg.no_click_utility)
    cart = 1.0 / (1.0 + np.exp(-(4.0 * (c.quality - 0.5) + 0.5)))
    purchase = 1.0 / (1.0 + np.exp(-(1.0 + 2.0 * (c.quality - 0.5) - 2.0 * shopper.price_sensitivity * log_price)))
    return attraction, 1.0 + 2.0 * cart * (1.0 + 2.5 * purchase)


def immediate_value(session: Session) -> np.ndarray:
    """Expected immediate reward of each catalog item for this shopper now, up to the slate's
    common logit denominator."""
    attraction, reward = item_values(session.world, session.user, session.clicks)
    return attraction * reward


def session_rewards(oracle: str, seed: int, sessions: int = 400, slate_size: int = 10) -> tuple[float, float]:
    """(reward per session, slates per session) of ``oracle`` over ``sessions`` sessions:
    click-greedy ranks by immediate value; quality-aware does the same but never shows an item
    of quality below 0.5."""
    if oracle not in ORACLES:
        raise ValueError(f"oracle must be one of {', '.join(ORACLES)}, not {oracle!r}")
    world = World(WorldConfig(), seed=seed)
    rng = np.random.default_rng(seed)
    total, slates = 0.0, 0
    for s in range(sessions):
        session = world.start_session(int(rng.integers(world.config.users)), seed=s)
        while not session.over:
            score = immediate_value(session)
            if oracle == "quality-aware":
                score = score * (world.catalog.quality >= 0.5)
            outcome = session.respond(list(np.argsort(-score)[:slate_size]))
            slates += 1
            total += (outcome.clicked is not None) + 2 * outcome.add_to_cart + 5 * outcome.purchase
    return total / sessions, slates / sessions


if __name__ == "__main__":
    for name in ORACLES:
        runs = [session_rewards(name, seed) for seed in range(5)]
        print(f"{name:14s} reward per session {np.mean([r for r, _ in runs]):.1f}, "
              f"slates per session {np.mean([n for _, n in runs]):.1f} (5 seeds x 400 sessions)")
