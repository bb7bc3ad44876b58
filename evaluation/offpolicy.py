"""The value of a target model on logged traffic: off-policy evaluation of slates.

The target is a model's scores explored as the agent explores them (``agents.policies.Explorer``:
greedy, epsilon-greedy or Boltzmann; the diversity term is not supported); for a SlateQ model,
the scores at each position are its assortment gains given the items above. The agent fills a
slate top-down and logs, per position, the probability of its pick given the items above
(``agents.exploration``). So the target is asked the same question, position by position: how
likely was it to place the logged item there, given the items the log placed above?

The value is the expected sum of immediate rewards per impression (the slate's bandit value,
not the discounted long-term return). A position's reward is weighted by the whole prefix,
``w_j = prod_{i <= j} pi_i / mu_i`` (per-decision importance sampling): the target would have
reached position j with other items above, so the position's own ratio alone would be biased.
This is unbiased when a position's reward depends on the context and the items at and above
it, not on those below. DR adds a reward model q(item, position)
(``estimators.RewardModel``, cross-fitted over two halves of the impressions split by a hash of
request_id): ``w_{j-1} sum_a pi(a | prefix) q(a, j) + w_j (r_j - q(a_j, j))``.

Only complete impressions are used: every shown item has its transition, each with a logged
propensity > 0 (the prefix needs them all).
"""

from __future__ import annotations

import math

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from shelfq.agents import exploration
from shelfq.agents.policies import Ask, DQNPolicy, Explorer, Scored
from shelfq.evaluation.estimators import OffPolicyWarning, doubly_robust, ips, mean_ci, snips
from shelfq.evaluation.estimators import cross_fit as fit_reward_models
from shelfq.evaluation.logs import LoggedImpression
from shelfq.learner.artifact import LoadedModel
from shelfq.learner.features import stable_hash
from shelfq.learner.slateq import assortment_gains

SCORE_BATCH = 256

SKIPPED = {
    "incomplete": "some shown items have no transition in the log (not emitted yet, or cut by --limit)",
    "no_propensity": "a position was logged without a propensity (a frontend that did not use the agent)",
    "zero_propensity": "a position was logged with propensity 0, which cannot have been drawn",
}


def next_item_probs(scores: np.ndarray, open_: np.ndarray, explorer: Explorer) -> np.ndarray:
    """The explorer's distribution of the next pick over all candidates, given which are still
    open: what ``agents.exploration`` draws from (``exploration.next_pick_probs``).

    >>> p = next_item_probs(np.array([0.1, 3.0, 2.0]), np.array([True, False, True]), Explorer("epsilon", 0.3))
    >>> [round(float(x), 3) for x in p]
    [0.15, 0.0, 0.85]
    """
    if explorer.diversity:
        raise ValueError("the target's diversity term (MMR) is not supported; evaluate with diversity 0")
    return exploration.next_pick_probs(scores, open_, explorer.kind, epsilon=explorer.epsilon,
                                       temperature=explorer.temperature)


def usable(impressions: Sequence[LoggedImpression]) -> tuple[list[LoggedImpression], Counter[str]]:
    """The impressions OPE can weight, and why the others cannot be."""
    kept, skipped = [], Counter[str]()
    for imp in impressions:
        props = [p.propensity for p in imp.positions.values()]
        if not imp.complete:
            skipped["incomplete"] += 1
        elif any(p is None for p in props):
            skipped["no_propensity"] += 1
        elif any(p <= 0 for p in props):  # type: ignore[operator]
            skipped["zero_propensity"] += 1
        else:
            kept.append(imp)
    return kept, skipped


def evaluate_model(impressions: Sequence[LoggedImpression], model: LoadedModel, explorer: Explorer,
                   candidates: Sequence[str], max_candidates: int = 1000) -> dict[str, Any]:
    """IPS, SNIPS and DR of the explored model's value per impression, next to the logged
    value of the same impressions; ``candidates`` is what the target chooses from."""
    if not candidates:
        raise ValueError("the target has no candidates to choose from")
    kept, skipped = usable(impressions)
    out: dict[str, Any] = {
        "policy": model.headers.policy, "model_version": model.headers.version, "exploration": explorer.kind,
        "epsilon": explorer.epsilon if explorer.kind == "epsilon" else None,
        "temperature": explorer.temperature if explorer.kind == "boltzmann" else None,
        "candidates": len(candidates), "max_candidates": max_candidates, "impressions": len(kept),
        "skipped": dict(skipped), "notes": [f"{n} impressions skipped: {SKIPPED[why]}" for why, n in skipped.items()],
    }
    if not kept:
        out["notes"].append("no impression can be weighted, so there is no estimate")
        return out
    cols, outside = _weighted_samples(kept, DQNPolicy(model, explorer), list(candidates), max_candidates)
    if outside:
        out["notes"].append(f"{outside} logged items are not among the target's candidates: the target gives them "
                            "probability 0")
    out["transitions"] = len(cols["rewards"])
    out["logged_value"] = mean_ci([sum(p.reward for p in imp.positions.values()) for imp in kept]).as_dict()
    weights = cols["target_probs"] / cols["logging_probs"]
    out["mean_weight"] = float(weights.mean())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OffPolicyWarning)
        args = (cols["rewards"], cols["target_probs"], cols["logging_probs"])
        out["ips"] = ips(*args, groups=cols["groups"]).as_dict()
        try:
            out["snips"] = snips(*args, groups=cols["groups"]).as_dict()
        except ValueError as exc:
            out["snips"] = None
            out["notes"].append(str(exc))
        out["dr"] = doubly_robust(*args, cols["q_logged"], cols["q_target"], groups=cols["groups"]).as_dict()
    out["notes"] += list(dict.fromkeys(str(w.message) for w in caught))
    return out


def _weighted_samples(kept: list[LoggedImpression], policy: DQNPolicy, candidates: list[str],
                      max_candidates: int) -> tuple[dict[str, np.ndarray], int]:
    """One row per logged position: reward, prefix probabilities under target and logging
    policy, DR's two reward-model terms, and the impression it belongs to."""
    folds = [stable_hash(imp.request_id) % 2 for imp in kept]
    flat = [(item, j, imp.positions[j].reward, fold) for imp, fold in zip(kept, folds) for j, item in enumerate(imp.slate)]
    items, positions, rewards, sample_folds = (list(c) for c in zip(*flat))
    models = fit_reward_models(items, positions, rewards, np.array(sample_folds))
    depth = max(len(imp.slate) for imp in kept)
    tables = [m.table(candidates, depth) for m in models]
    column = {c: i for i, c in enumerate(candidates)}
    rows: list[tuple[float, float, float, float, float, int]] = []
    outside = 0
    for start in range(0, len(kept), SCORE_BATCH):
        batch = kept[start:start + SCORE_BATCH]
        asks = [Ask(imp.state, candidates, len(imp.slate)) for imp in batch]
        for n, (imp, scored) in enumerate(zip(batch, policy.evaluate(asks)), start):
            open_ = _shortlist(scored.score, max_candidates)
            gains = _Gains(scored)
            model, table = models[folds[n]], tables[folds[n]]
            # Prefix probabilities in logs: products over long slates and large catalogs
            # underflow. Each row carries both divided by the larger one: the ratio (the
            # weight) is exact and both stay in [0, 1].
            log_pi = log_mu = 0.0
            for j, item in enumerate(imp.slate):
                dist = next_item_probs(gains.at(j), open_, policy.explorer)
                at = column.get(item)
                outside += at is None
                q_target = math.exp(log_pi - log_mu) * float(dist @ table[j])  # w_{j-1} E_pi[q]
                q_logged = float(model.predict([item], [j])[0])
                p_target = float(dist[at]) if at is not None else 0.0
                log_pi += math.log(p_target) if p_target > 0 else -math.inf
                log_mu += math.log(imp.positions[j].propensity)  # type: ignore[arg-type]
                top = max(log_pi, log_mu)
                rows.append((imp.positions[j].reward, math.exp(log_pi - top), math.exp(log_mu - top), q_logged, q_target, n))
                if at is not None:
                    open_[at] = False
                    gains.place(at, j)
    cols = np.array(rows).T
    names = ("rewards", "target_probs", "logging_probs", "q_logged", "q_target", "groups")
    return dict(zip(names, cols)), outside


class _Gains:
    """What the target's explorer draws from at each position of a logged slate: the scores of
    an item-wise model, or a SlateQ model's assortment gains given the items placed above
    (``agents.exploration`` fills slates the same way)."""

    def __init__(self, scored: Scored) -> None:
        self.scored = scored
        self.num, self.den = (scored.choice.no_click_value if scored.choice is not None else 0.0), 1.0

    def at(self, j: int) -> np.ndarray:
        choice, qbar = self.scored.choice, self.scored.qbar
        if choice is None or qbar is None:
            return self.scored.score
        return assortment_gains(qbar, choice.at(j), self.num, self.den)

    def place(self, at: int, j: int) -> None:
        choice, qbar = self.scored.choice, self.scored.qbar
        if choice is not None and qbar is not None:
            v = float(choice.at(j)[at])
            self.num, self.den = self.num + v * float(qbar[at]), self.den + v


def _shortlist(scores: np.ndarray, limit: int) -> np.ndarray:
    """Which candidates the target draws from: above ``limit`` the agent keeps the best
    ``limit`` by score (agents.policies) and explores among those."""
    keep = np.ones(len(scores), dtype=bool)
    if len(scores) > limit:
        keep[:] = False
        keep[np.argpartition(-scores, limit - 1)[:limit]] = True
    return keep
