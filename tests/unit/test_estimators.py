"""Off-policy estimators on synthetic contextual-bandit logs whose true values are known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from shelfq.evaluation.estimators import (
    OffPolicyWarning,
    RewardModel,
    cross_fit,
    doubly_robust,
    ips,
    mean_ci,
    snips,
)

CONTEXTS, ACTIONS = 5, 4


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Bandit:
    """Contexts x ~ P(x), actions a ~ mu(.|x), click r ~ Bernoulli(p(x, a))."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.p_x = rng.dirichlet(np.ones(CONTEXTS))
        self.p = rng.uniform(0.05, 0.6, size=(CONTEXTS, ACTIONS))
        self.mu = softmax(rng.normal(size=(CONTEXTS, ACTIONS)))
        # The target leans towards the better actions: a different policy, covered by mu.
        self.pi = softmax(10 * self.p + rng.normal(scale=0.3, size=(CONTEXTS, ACTIONS)))

    def value(self, policy: np.ndarray) -> float:
        """V(policy) = E_x sum_a policy(a|x) p(x, a)."""
        return float(self.p_x @ (policy * self.p).sum(axis=1))

    def log(self, n: int, seed: int, deterministic: bool = False) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = rng.choice(CONTEXTS, size=n, p=self.p_x)
        a = (rng.random(n)[:, None] > np.cumsum(self.mu[x], axis=1)).sum(axis=1)
        r = self.p[x, a] if deterministic else (rng.random(n) < self.p[x, a]).astype(float)
        return {"x": x, "a": a, "r": r, "mu": self.mu[x, a], "pi": self.pi[x, a]}


@pytest.fixture(scope="module")
def bandit() -> Bandit:
    return Bandit(seed=3)


@pytest.fixture(scope="module")
def log(bandit: Bandit) -> dict[str, np.ndarray]:
    return bandit.log(20_000, seed=11)


def inside(estimate, truth: float) -> bool:
    return estimate.low <= truth <= estimate.high


def test_ips_of_the_logging_policy_is_its_on_policy_mean(bandit: Bandit, log) -> None:
    on_policy = ips(log["r"], log["mu"], log["mu"])
    assert on_policy.value == pytest.approx(log["r"].mean())
    assert on_policy.ess == pytest.approx(len(log["r"]))
    assert inside(on_policy, bandit.value(bandit.mu))
    assert inside(mean_ci(log["r"]), bandit.value(bandit.mu))


def fitted_dr(bandit: Bandit, log, **kw):
    """DR with a reward model per (context, action), cross-fitted on two halves."""
    keys = [f"{x}|{a}" for x, a in zip(log["x"], log["a"])]
    folds = np.arange(len(keys)) % 2
    models = cross_fit(keys, [0] * len(keys), log["r"], folds)
    q_logged = np.empty(len(keys))
    q_target = np.empty(len(keys))
    grid = [f"{x}|{a}" for x in range(CONTEXTS) for a in range(ACTIONS)]
    for k, model in enumerate(models):
        q = model.table(grid, 1)[0].reshape(CONTEXTS, ACTIONS)
        rows = folds == k
        q_logged[rows] = q[log["x"][rows], log["a"][rows]]
        q_target[rows] = (bandit.pi * q).sum(axis=1)[log["x"][rows]]
    return doubly_robust(log["r"], log["pi"], log["mu"], q_logged, q_target, **kw)


def test_every_estimator_covers_the_true_value_of_another_policy(bandit: Bandit, log) -> None:
    truth = bandit.value(bandit.pi)
    assert abs(truth - bandit.value(bandit.mu)) > 0.05, "the target must differ from the logging policy"
    estimates = {"ips": ips(log["r"], log["pi"], log["mu"]), "snips": snips(log["r"], log["pi"], log["mu"]),
                 "dr": fitted_dr(bandit, log)}
    for name, e in estimates.items():
        assert inside(e, truth), (name, e, truth)
        assert e.high - e.low < 0.05, (name, e)
    assert estimates["snips"].se <= estimates["ips"].se
    assert estimates["dr"].se <= estimates["ips"].se


def test_dr_with_the_true_reward_model_has_almost_no_error(bandit: Bandit) -> None:
    # Rewards that the model predicts exactly: DR is then exactly the target's value on the
    # sampled contexts, while IPS still carries the spread of its weights.
    log = bandit.log(20_000, seed=5, deterministic=True)
    q_logged = bandit.p[log["x"], log["a"]]
    q_target = (bandit.pi * bandit.p).sum(axis=1)[log["x"]]
    dr = doubly_robust(log["r"], log["pi"], log["mu"], q_logged, q_target)
    on_these_contexts = q_target.mean()
    assert abs(dr.value - on_these_contexts) < 1e-12
    assert abs(ips(log["r"], log["pi"], log["mu"]).value - on_these_contexts) > 1e-4
    assert inside(dr, bandit.value(bandit.pi))
    # With click noise the true model still narrows the interval well below IPS's.
    noisy = bandit.log(20_000, seed=8)
    dr = doubly_robust(noisy["r"], noisy["pi"], noisy["mu"], bandit.p[noisy["x"], noisy["a"]],
                       (bandit.pi * bandit.p).sum(axis=1)[noisy["x"]])
    assert dr.se < 0.9 * ips(noisy["r"], noisy["pi"], noisy["mu"]).se
    assert inside(dr, bandit.value(bandit.pi))


def test_intervals_cover_the_truth_about_95_percent_of_the_time(bandit: Bandit) -> None:
    """Many small logs, grouped in units of 1 to 3 decisions: the intervals are honest."""
    truth = bandit.value(bandit.pi)
    rng = np.random.default_rng(0)
    hits = {"ips": 0, "snips": 0}
    runs = 300
    for i in range(runs):
        log = bandit.log(600, seed=1000 + i)
        sizes = rng.integers(1, 4, size=600)
        groups = np.repeat(np.arange(600), sizes)[:600]
        per_unit = truth * np.bincount(groups).mean()  # each unit's value: its decisions' sum
        hits["ips"] += inside(ips(log["r"], log["pi"], log["mu"], groups=groups),
                              truth * 600 / (groups.max() + 1))
        hits["snips"] += inside(snips(log["r"], log["pi"], log["mu"], groups=groups), per_unit)
    for name, count in hits.items():
        assert 0.90 <= count / runs <= 0.99, (name, count / runs)


def test_groups_sum_their_members() -> None:
    r, p = np.array([1.0, 0.0, 1.0, 1.0]), np.full(4, 0.5)
    e = ips(r, p, p, groups=["a", "a", "b", "b"])
    assert (e.value, e.n) == (1.5, 2)
    assert snips(r, p, p, groups=["a", "a", "b", "b"]).value == pytest.approx(1.5)
    assert mean_ci(r, groups=[1, 1, 2, 2]).n == 2


def test_reward_model_shrinks_rare_pairs_and_cross_fits() -> None:
    model = RewardModel(prior=10).fit(["a"] * 100 + ["b"], [0] * 100 + [3], [1.0] * 100 + [0.0])
    assert model.predict(["a", "b", "zzz"], [0, 3, 0]).tolist()[2] == pytest.approx(100 / 101)
    assert 0.8 < model.predict(["b"], [3])[0] < 0.9, "one zero reward moves b only a little from the global mean"
    table = model.table(["b", "a"], 4)
    assert table.shape == (4, 2) and table[3, 0] == model.predict(["b"], [3])[0]
    folds = np.array([0, 1])
    m0, m1 = cross_fit(["a", "b"], [0, 0], [1.0, 0.0], folds)
    assert m0.mean == 0.0 and m1.mean == 1.0, "each fold's model is fitted on the other fold"
    assert RewardModel().fit([], [], []).predict(["a"], [0]).tolist() == [0.0]


@pytest.mark.parametrize("args,message", [
    (([1.0, 0.0], [0.5], [0.5, 0.5]), r"target_probs: has 1 entries but rewards has 2"),
    (([1.0, 0.0], [0.5, 0.5], [0.5, 0.0]), r"logging_probs\[1\]: must be in \(0, 1\], got 0.0"),
    (([1.0, 0.0], [0.5, 0.5], [1.5, 0.5]), r"logging_probs\[0\]: must be in \(0, 1\], got 1.5"),
    (([1.0, 0.0], [-0.1, 0.5], [0.5, 0.5]), r"target_probs\[0\]: must be in \[0, 1\], got -0.1"),
    (([1.0, float("nan")], [0.5, 0.5], [0.5, 0.5]), r"rewards\[1\]: must be a finite number, got nan"),
    (([], [], []), r"rewards: no samples"),
    (([[1.0]], [[0.5]], [[0.5]]), r"rewards: expected a 1-d array, got shape \(1, 1\)"),
])
def test_impossible_input_is_refused_precisely(args, message: str) -> None:
    for estimator in (ips, snips):
        with pytest.raises(ValueError, match=message):
            estimator(*args)


def test_other_impossible_input() -> None:
    with pytest.raises(ValueError, match=r"reward_hat_target: has 1 entries but rewards has 2"):
        doubly_robust([1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.1, 0.1], [0.1])
    with pytest.raises(ValueError, match=r"groups: has 3 entries but rewards has 2"):
        ips([1.0, 0.0], [0.5, 0.5], [0.5, 0.5], groups=[1, 2, 3])
    with pytest.raises(ValueError, match=r"every importance weight is 0"):
        snips([1.0, 0.0], [0.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"x\[0\]: must be a finite number"):
        mean_ci([float("inf")])


def test_odd_weights_warn() -> None:
    r = np.ones(200)
    mu = np.full(200, 0.5)
    pi = np.full(200, 0.5)
    pi[0], mu[0] = 1.0, 0.02  # one weight of 50 among weights of 1
    with pytest.warns(OffPolicyWarning, match=r"one sample carries \d+% of the total importance weight"):
        ips(r, pi, mu)
    with pytest.warns(OffPolicyWarning, match=r"mean importance weight is 0.1"):
        ips(r, np.full(200, 0.05), np.full(200, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ips(r, np.full(200, 0.5), np.full(200, 0.5))  # ordinary input: silent
    single = mean_ci([1.0])
    assert single.value == 1.0 and single.as_dict()["low"] is None
