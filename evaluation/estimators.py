"""Off-policy estimators: what would a target policy have earned on traffic another policy chose?

Every function takes one entry per logged decision: the reward it earned, the probability the
target policy gives the logged action (``target_probs``) and the probability the logging policy
gave it (``logging_probs``, the logged propensity). Their ratio ``w`` is the importance weight.

- ``ips``: the mean of ``w * r``. Unbiased when the logging policy gives every action the
  target may take a probability > 0 and the logged propensities are right; its variance grows
  with the weights.
- ``snips``: ``sum(w r) / sum(w)``, self-normalised. Slightly biased, far less variance, and it
  never leaves the range of the rewards.
- ``doubly_robust``: a reward model's prediction for the target's actions plus IPS on the
  model's residuals. Unbiased when either the propensities or the model are right, and the
  better the model the narrower the interval.

Each returns an ``Estimate``: the value with a 95% interval from the normal approximation,
value +- 1.96 standard errors, the standard error taken from the per-sample influence terms
(for SNIPS by the delta method: ``w (r - V) / mean(w)``). With ``groups`` the terms of one
unit (the positions of one impression) are summed first: the value is then per unit, and the
interval treats units, not decisions, as independent.

>>> r = np.array([1.0, 0.0, 1.0, 0.0])
>>> mu = np.full(4, 0.5)                    # the logging policy flipped a coin
>>> pi = np.array([1.0, 0.0, 1.0, 0.0])     # the target always takes the rewarded action
>>> ips(r, pi, mu).value, snips(r, pi, mu).value
(1.0, 1.0)
>>> e = mean_ci([1.0, 2.0, 3.0, 4.0])
>>> e.value, round(e.low, 3), round(e.high, 3)
(2.5, 1.235, 3.765)
>>> ips(r, pi, [0.5, 0.5, 0.0, 0.5])
Traceback (most recent call last):
...
ValueError: logging_probs[2]: must be in (0, 1], got 0.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np

Z95 = 1.959963984540054
#: Warn when one sample carries more than this share of the total importance weight.
HEAVY_SHARE = 0.1
ArrayLike = Sequence[float] | np.ndarray


class OffPolicyWarning(UserWarning):
    """The input is possible but the estimate deserves suspicion (a few huge weights, say)."""


class Estimate(NamedTuple):
    value: float
    low: float   # 95% interval
    high: float
    n: int       # independent units: groups, or samples when there are no groups
    ess: float   # effective sample size of the weights, (sum w)^2 / sum w^2 (n for plain means)
    se: float    # standard error

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN (no interval from one unit) becomes None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self._asdict().items()}


def mean_ci(x: ArrayLike, groups: Sequence[Hashable] | np.ndarray | None = None) -> Estimate:
    """The mean of ``x`` with its 95% interval (an on-policy figure). With ``groups`` the mean
    is still per sample, but the interval treats groups as the independent units (a cluster-
    robust ratio estimate: CTR over transitions, clustered by impression).

    >>> round(mean_ci([1, 0, 1, 1], groups=["a", "a", "b", "b"]).value, 2)
    0.75
    """
    v = _array("x", x)
    if v.size == 0:
        raise ValueError("x: no samples")
    idx, n = _units(groups, len(v))
    mean = float(v.mean())
    counts = np.bincount(idx, minlength=n)
    influence = (np.bincount(idx, v, n) - mean * counts) / counts.mean()
    return _interval(mean, influence, float(n))


def ips(rewards: ArrayLike, target_probs: ArrayLike, logging_probs: ArrayLike, *,
        groups: Sequence[Hashable] | np.ndarray | None = None) -> Estimate:
    """Inverse propensity scoring: the mean over units of the sum of ``w * r``."""
    r, w = _weighted(rewards, target_probs, logging_probs)
    idx, n = _units(groups, len(r))
    totals = np.bincount(idx, w * r, n)
    return _interval(float(totals.mean()), totals, _ess(w))


def snips(rewards: ArrayLike, target_probs: ArrayLike, logging_probs: ArrayLike, *,
          groups: Sequence[Hashable] | np.ndarray | None = None) -> Estimate:
    """Self-normalised IPS: ``v = sum(w r) / sum(w)`` per sample, times samples per unit.

    With groups of unequal size the unit's sample count enters the influence term too (delta
    method on the ratio of the unit means of ``w r``, ``w`` and the count).
    """
    r, w = _weighted(rewards, target_probs, logging_probs)
    if not w.sum() > 0:
        raise ValueError("snips: every importance weight is 0 (the target never takes a logged action), "
                         "so there is nothing to normalise by")
    idx, n = _units(groups, len(r))
    v = float((w * r).sum() / w.sum())
    counts = np.bincount(idx, minlength=n)
    influence = np.bincount(idx, w * (r - v), n) / w.mean() + v * counts
    return _interval(v * float(counts.mean()), influence, _ess(w))


def doubly_robust(rewards: ArrayLike, target_probs: ArrayLike, logging_probs: ArrayLike,
                  reward_hat_logged: ArrayLike, reward_hat_target: ArrayLike, *,
                  groups: Sequence[Hashable] | np.ndarray | None = None) -> Estimate:
    """``reward_hat_target + w (r - reward_hat_logged)`` summed per unit, averaged over units.

    ``reward_hat_logged`` is q(x, a_logged); ``reward_hat_target`` is sum_a pi(a|x) q(x, a).
    Fit q on other samples than those it predicts (``cross_fit``), or DR reuses its own noise.
    """
    r, w = _weighted(rewards, target_probs, logging_probs)
    q_logged = _array("reward_hat_logged", reward_hat_logged, len(r))
    q_target = _array("reward_hat_target", reward_hat_target, len(r))
    idx, n = _units(groups, len(r))
    totals = np.bincount(idx, q_target + w * (r - q_logged), n)
    return _interval(float(totals.mean()), totals, _ess(w))


# -- a reward model for DR ---------------------------------------------------------------------


class RewardModel:
    """q(item, position): the mean reward of an item at a position, shrunk towards the item's
    mean over all positions, itself shrunk towards the global mean. Each level borrows ``prior``
    pseudo-observations from the level above, so a rare pair leans on its item and an unseen
    item gets the global mean.

    The context is ignored on purpose: the model only has to lower DR's variance (DR is
    unbiased whatever q is, given right propensities), and a per-item mean needs no training.

    >>> m = RewardModel(prior=1.0).fit(["a", "a", "b"], [0, 0, 1], [1.0, 1.0, 0.0])
    >>> m.predict(["a", "b", "new"], [0, 1, 0]).round(3).tolist()
    [0.963, 0.167, 0.667]
    """

    def __init__(self, prior: float = 10.0) -> None:
        if not prior > 0:
            raise ValueError(f"prior must be > 0, got {prior}")
        self.prior = prior
        self.mean = 0.0
        self.items: dict[str, float] = {}
        self.pairs: dict[tuple[str, int], float] = {}

    def fit(self, items: Sequence[str], positions: Sequence[int], rewards: ArrayLike) -> RewardModel:
        """Fit on the samples; with none, every prediction is 0 (DR then equals IPS)."""
        r = _array("rewards", rewards, len(items))
        if len(positions) != len(items):
            raise ValueError(f"positions: has {len(positions)} entries but items has {len(items)}")
        self.mean = float(r.mean()) if r.size else 0.0
        item_sum: dict[str, list[float]] = {}
        pair_sum: dict[tuple[str, int], list[float]] = {}
        for item, pos, reward in zip(items, positions, r.tolist()):
            for table, key in ((item_sum, item), (pair_sum, (item, int(pos)))):
                acc = table.setdefault(key, [0.0, 0.0])  # type: ignore[arg-type]
                acc[0] += reward
                acc[1] += 1
        k = self.prior
        self.items = {i: (s + k * self.mean) / (c + k) for i, (s, c) in item_sum.items()}
        self.pairs = {p: (s + k * self.items[p[0]]) / (c + k) for p, (s, c) in pair_sum.items()}
        return self

    def predict(self, items: Sequence[str], positions: Sequence[int]) -> np.ndarray:
        return np.array([self.pairs.get((i, int(p)), self.items.get(i, self.mean)) for i, p in zip(items, positions)])

    def table(self, candidates: Sequence[str], n_positions: int) -> np.ndarray:
        """q for every (position, candidate): an array [n_positions, len(candidates)]."""
        out = np.tile(np.array([self.items.get(c, self.mean) for c in candidates]), (n_positions, 1))
        column = {c: i for i, c in enumerate(candidates)}
        for (item, pos), q in self.pairs.items():
            if pos < n_positions and item in column:
                out[pos, column[item]] = q
        return out


def cross_fit(items: Sequence[str], positions: Sequence[int], rewards: ArrayLike, folds: np.ndarray,
              prior: float = 10.0) -> list[RewardModel]:
    """One model per fold, each fitted on the samples of the other folds: predict the samples
    of fold k with model k, and no sample is scored by a model that saw its own reward."""
    f = np.asarray(folds)
    if f.shape != (len(items),):
        raise ValueError(f"folds: has {f.size} entries but items has {len(items)}")
    r = _array("rewards", rewards, len(items))
    models = []
    for k in range(int(f.max()) + 1 if f.size else 0):
        rest = np.flatnonzero(f != k).tolist()
        models.append(RewardModel(prior).fit([items[i] for i in rest], [positions[i] for i in rest], r[rest]))
    return models


# -- checks and intervals ----------------------------------------------------------------------


def _array(name: str, x: ArrayLike, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name}: has {len(a)} entries but rewards has {n}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]: must be a finite number, got {a[bad[0]]}")
    return a


def _weighted(rewards: ArrayLike, target_probs: ArrayLike, logging_probs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r = _array("rewards", rewards)
    if r.size == 0:
        raise ValueError("rewards: no samples")
    pi = _array("target_probs", target_probs, len(r))
    mu = _array("logging_probs", logging_probs, len(r))
    for name, p, low_ok in (("target_probs", pi, True), ("logging_probs", mu, False)):
        bad = np.flatnonzero((p < 0 if low_ok else p <= 0) | (p > 1))
        if bad.size:
            rng = "[0, 1]" if low_ok else "(0, 1]"
            raise ValueError(f"{name}[{bad[0]}]: must be in {rng}, got {p[bad[0]]}")
    w = pi / mu
    _warn_about(w)
    return r, w


def _warn_about(w: np.ndarray) -> None:
    total = w.sum()
    if total > 0 and len(w) >= 20 and w.max() / total > HEAVY_SHARE:
        warnings.warn(f"one sample carries {w.max() / total:.0%} of the total importance weight (max weight "
                      f"{w.max():.3g}, effective sample size {_ess(w):.1f} of {len(w)}): the estimate rests on "
                      "a few samples", OffPolicyWarning, stacklevel=3)
    if len(w) >= 100 and not 0.5 <= w.mean() <= 2:
        # E[w] = 1 under the logging policy wherever it covers the target's actions.
        warnings.warn(f"mean importance weight is {w.mean():.3g}, not near 1: the target acts where the logging "
                      "policy rarely or never does, or the propensities are wrong", OffPolicyWarning, stacklevel=3)


def _ess(w: np.ndarray) -> float:
    sq = float((w * w).sum())
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def _units(groups: Sequence[Hashable] | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Each sample's unit index, and the number of units."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups: has {g.size} entries but rewards has {n}")
    _, idx = np.unique(g, return_inverse=True)
    return idx, int(idx.max()) + 1


def _interval(value: float, influence: np.ndarray, ess: float) -> Estimate:
    """value +- 1.96 standard errors, the error from the spread of the per-unit terms."""
    n = len(influence)
    se = float(influence.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(value, value - Z95 * se, value + Z95 * se, n, ess, se)
