"""A model version's off-policy value on the gate's window: SNIPS and DR with their intervals,
from ``evaluation.offpolicy.evaluate_model`` (the model explored as the agents explore it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from shelfq.agents.policies import Explorer
from shelfq.contracts.decisions import Interval
from shelfq.evaluation.gate.window import as_interval
from shelfq.evaluation.logs import LoggedImpression
from shelfq.learner.artifact import LoadedModel
from shelfq.evaluation.offpolicy import evaluate_model


class Estimates(NamedTuple):
    snips: Interval | None
    dr: Interval | None
    impressions: int
    notes: list[str]


def estimate(impressions: Sequence[LoggedImpression], model: LoadedModel, explorer: Explorer,
             candidates: Sequence[str], max_candidates: int) -> Estimates:
    """SNIPS and DR of ``model`` on ``impressions``; None where there is no estimate."""
    if not impressions or not candidates:
        return Estimates(None, None, 0, ["nothing to estimate on"])
    out = evaluate_model(impressions, model, explorer, candidates, max_candidates)
    return Estimates(as_interval(out.get("snips")), as_interval(out.get("dr")), int(out.get("impressions", 0)),
                     list(out.get("notes", [])))
