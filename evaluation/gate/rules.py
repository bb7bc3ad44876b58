"""The gate's rules, pure: when a candidate is promoted, and when a serving version is rolled back.

**Promotion.** A candidate is promoted when, for SNIPS and DR alike, the lower bound of its 95%
interval clears the serving version's estimate on the same window minus ``margin`` of it:

    candidate.low >= serving.value - margin * |serving.value|

Both estimators must agree: SNIPS stays within the rewards' range but is biased by the
weights' normalisation, DR leans on its reward model; they fail in different ways. A candidate
without an interval (too few impressions with weight) or with an effective sample size below
``min_ess`` is held: the logged traffic says too little about what it would do, and a gate
that is unsure keeps what serves.

>>> serving = Interval(value=1.0, low=0.9, high=1.1, n=500, ess=480.0)
>>> promotion(Interval(value=1.02, low=0.97, high=1.07, n=500, ess=300.0),
...           Interval(value=1.0, low=0.96, high=1.04, n=500, ess=300.0), serving, serving, margin=0.05, min_ess=30)
Verdict(promote=True, reason='SNIPS 1.020 [0.970, 1.070] and DR 1.000 [0.960, 1.040] clear the serving estimates minus 5% (0.950, 0.950)')
>>> bad = Interval(value=0.7, low=0.6, high=0.8, n=500, ess=300.0)
>>> promotion(bad, bad, serving, serving, margin=0.05, min_ess=30).promote
False

**Rollback.** A serving version's live reward per impression (its own slates, on-policy) is
compared with the interval of its estimate from when it was promoted. Below the interval's low
end, a clock starts; back inside, it stops. Below for ``after_s`` without a break: roll back.

>>> clock = RollbackClock(after_s=60)
>>> clock.update(live=0.5, estimate_low=0.9, now=0.0), clock.update(live=0.5, estimate_low=0.9, now=59.0)
(False, False)
>>> clock.update(live=0.5, estimate_low=0.9, now=61.0)
True
>>> clock.update(live=1.0, estimate_low=0.9, now=62.0), clock.below_since
(False, None)
"""

from __future__ import annotations

from typing import NamedTuple

from shelfq.contracts.decisions import Interval


class Verdict(NamedTuple):
    promote: bool
    reason: str


def _fmt(e: Interval) -> str:
    lo = "?" if e.low is None else f"{e.low:.3f}"
    hi = "?" if e.high is None else f"{e.high:.3f}"
    return f"{e.value:.3f} [{lo}, {hi}]"


def promotion(candidate_snips: Interval | None, candidate_dr: Interval | None, serving_snips: Interval | None,
              serving_dr: Interval | None, *, margin: float, min_ess: float) -> Verdict:
    """Whether the candidate clears the serving version on both estimators (module docstring)."""
    bars = []
    for name, cand, serv in (("SNIPS", candidate_snips, serving_snips), ("DR", candidate_dr, serving_dr)):
        if cand is None or serv is None:
            return Verdict(False, f"no {name} estimate of the {'candidate' if cand is None else 'serving version'} "
                                  "on the window")
        if cand.low is None:
            return Verdict(False, f"the candidate's {name} estimate has no interval")
        if cand.ess is not None and cand.ess < min_ess:
            return Verdict(False, f"the candidate's importance weights have an effective sample size of "
                                  f"{cand.ess:.1f} (< {min_ess:g}): the logged traffic says too little about it")
        bar = serv.value - margin * abs(serv.value)
        if cand.low < bar:
            return Verdict(False, f"{name} {_fmt(cand)}: its lower bound is below the serving version's "
                                  f"{serv.value:.3f} minus {margin:.0%} ({bar:.3f})")
        bars.append((name, cand, bar))
    (_, snips, snips_bar), (_, dr, dr_bar) = bars
    return Verdict(True, f"SNIPS {_fmt(snips)} and DR {_fmt(dr)} clear the serving estimates minus {margin:.0%} "
                         f"({snips_bar:.3f}, {dr_bar:.3f})")


class RollbackClock:
    """How long a serving version's live reward has stayed below its estimate's interval."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self.below_since: float | None = None

    def update(self, live: float, estimate_low: float, now: float) -> bool:
        """Note one observation; True once the live reward has been below for ``after_s``."""
        if live >= estimate_low:
            self.below_since = None
            return False
        if self.below_since is None:
            self.below_since = now
        return now - self.below_since >= self.after_s

    def reset(self) -> None:
        self.below_since = None
