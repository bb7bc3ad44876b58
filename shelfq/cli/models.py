"""``shelfq models list|promote VERSION|rollback --policy P``: an operator's view of a policy's
model versions and the gate's decisions, and the same decisions by hand.

- ``list``: every version on ``models`` (version, created, whether the loader takes it), its
  status from ``model-decisions`` (serving, retired, held, rolled back, shadow, skipped) and
  the estimates the gate made of it.
- ``promote VERSION``: refused unless the version is on ``models`` and passes the loader's
  checks (``learner.artifact.load_model``, as an agent loads it), and unless the gate has not
  held or rolled it back; ``--force`` skips only the latter (a forced promote: the operator
  overrules the gate's verdict, never the loader). It is written as a decision ``by=operator``
  that every agent follows and the gate takes as its state.
- ``rollback``: the serving version is marked rolled back and the last good one before it
  serves; refused when there is none, or when that one is no longer loadable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shelfq.contracts.decisions import ModelDecision, encode_decision, read_decisions
from shelfq.contracts.errors import EventError, ShelfqError
from shelfq.contracts.kafka import ReliableProducer
from shelfq.contracts.models import ModelHeaders
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import MODEL_DECISIONS, MODELS
from shelfq.evaluation.gate import ledger
from shelfq.evaluation.logs import read_to_end
from shelfq.learner.artifact import load_model


def versions_on_topic(settings: Settings, policy: str) -> dict[int, dict[str, Any]]:
    """Every version of ``policy`` on ``models``: created_ts and whether (why not) it loads."""
    big = settings.model_max_bytes + (1 << 16)
    out: dict[int, dict[str, Any]] = {}
    fetch: dict[str, Any] = {"fetch.max.bytes": big, "max.partition.fetch.bytes": big, "isolation.level": "read_committed"}
    for msg in read_to_end(settings, MODELS, **fetch):
        if msg.key() != policy.encode():
            continue
        try:
            headers = ModelHeaders.from_headers(msg.headers())
        except EventError as exc:
            out.setdefault(-1, {"created_ts": None, "loads": False, "problem": str(exc)})
            continue
        try:
            load_model(msg.value(), msg.headers(), policy=policy)
            out[headers.version] = {"created_ts": headers.created_ts, "loads": True, "problem": None}
        except EventError as exc:
            out[headers.version] = {"created_ts": headers.created_ts, "loads": False, "problem": str(exc)}
    out.pop(-1, None)
    return out


def listing(settings: Settings, policy: str) -> dict[str, Any]:
    versions = versions_on_topic(settings, policy)
    last = read_decisions(settings).get(policy)
    status = ledger.statuses(last, list(versions) + ([v.version for v in last.versions] if last else []))
    rows = []
    for v in sorted(status):
        decided = last.status(v) if last is not None else None
        on_topic = versions.get(v)
        rows.append({"version": v, "status": status[v], "on_topic": on_topic is not None,
                     "loads": bool(on_topic and on_topic["loads"]), "problem": on_topic["problem"] if on_topic else None,
                     "created_ts": on_topic["created_ts"] if on_topic else None,
                     "snips": _est(decided.snips if decided else None), "dr": _est(decided.dr if decided else None),
                     "reason": decided.reason if decided else ""})
    return {"policy": policy, "serving_version": last.serving_version if last else (max(versions) if versions else None),
            "decided": last is not None, "last_decision": _last(last), "versions": rows}


def promote(settings: Settings, policy: str, version: int, force: bool = False,
            say: Callable[[str], None] = print) -> ModelDecision:
    versions = versions_on_topic(settings, policy)
    found = versions.get(version)
    if found is None:
        raise ShelfqError(f"{policy} v{version} is not on {settings.topic(MODELS)}: nothing to promote")
    if not found["loads"]:
        raise ShelfqError(f"{policy} v{version} fails the loader's checks, so no agent could serve it: {found['problem']}")
    last = read_decisions(settings).get(policy) or ledger.adopt(policy, max(versions), time.time(),
                                                                reason="what the agents served before the first decision")
    if version == last.serving_version:
        raise ShelfqError(f"{policy} v{version} already serves")
    judged = last.status(version)
    if judged is not None and judged.status in ("held", "rolled_back") and not force:
        raise ShelfqError(f"{policy} v{version} was {judged.status.replace('_', ' ')} by the gate ({judged.reason}); "
                          "--force promotes it all the same")
    reason = "promoted by hand" + (f", overruling the gate ({judged.status.replace('_', ' ')})" if judged and force and
                                   judged.status in ("held", "rolled_back") else "")
    decision = ledger.promote(last, version, by="operator", reason=reason, now=time.time(),
                              forced=bool(force and judged is not None and judged.status in ("held", "rolled_back")))
    _write(settings, decision)
    say(f"{policy}: v{version} serves (was v{last.serving_version}); every agent switches at its next batch")
    return decision


def rollback(settings: Settings, policy: str, say: Callable[[str], None] = print) -> ModelDecision:
    last = read_decisions(settings).get(policy)
    if last is None:
        raise ShelfqError(f"{policy} has no decision yet, so no good version to roll back to (its agents serve the "
                          "newest model; promote an older version to serve it)")
    target = ledger.rollback_target(last)
    if target is None:
        raise ShelfqError(f"{policy} v{last.serving_version} is the only good version; there is nothing to roll back to")
    found = versions_on_topic(settings, policy).get(target)
    if found is None or not found["loads"]:
        raise ShelfqError(f"{policy}: the last good version, v{target}, is no longer loadable from "
                          f"{settings.topic(MODELS)} ({found['problem'] if found else 'compacted away'})")
    decision = ledger.rollback(last, by="operator", reason="rolled back by hand", now=time.time())
    _write(settings, decision)
    say(f"{policy}: v{last.serving_version} rolled back; v{decision.serving_version} serves")
    return decision


def format_listing(listing_: dict[str, Any]) -> str:
    lines = [f"policy {listing_['policy']}: serving v{listing_['serving_version']}"
             + ("" if listing_["decided"] else " (no decision yet: the newest version serves)")]
    lines.append(f"{'version':>7}  {'status':<11}  {'loads':<5}  {'SNIPS [95%]':<24}  {'DR [95%]':<24}  reason")
    for row in listing_["versions"]:
        lines.append(f"{row['version']:>7}  {row['status']:<11}  {'yes' if row['loads'] else 'no':<5}  "
                     f"{_fmt(row['snips']):<24}  {_fmt(row['dr']):<24}  {row['reason'] or row['problem'] or ''}")
    return "\n".join(lines)


def _write(settings: Settings, decision: ModelDecision) -> None:
    producer = ReliableProducer(settings, "models")
    producer.produce(settings.topic(MODEL_DECISIONS), encode_decision(decision), decision.policy)
    producer.flush()


def _est(interval: Any) -> dict[str, Any] | None:
    return None if interval is None else {"value": interval.value, "low": interval.low, "high": interval.high,
                                          "n": interval.n, "ess": interval.ess}


def _fmt(e: dict[str, Any] | None) -> str:
    if e is None:
        return "-"
    lo, hi = (("?" if e[k] is None else f"{e[k]:.3f}") for k in ("low", "high"))
    return f"{e['value']:.3f} [{lo}, {hi}]"


def _last(last: ModelDecision | None) -> dict[str, Any] | None:
    if last is None:
        return None
    return {"action": last.action, "version": last.version, "by": last.by, "ts": last.ts, "reason": last.reason,
            "forced": last.forced}
