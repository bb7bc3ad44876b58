"""The next decision from the last one, pure: what the gate and ``shelfq models`` write.

A decision carries the whole state of a policy's gate (``contracts.decisions``), so each
function here takes the latest decision (None: the policy has none yet) and returns the next:

- ``adopt``: the first decision of a policy: the version its agents serve now (the newest,
  as agents serve without a gate) becomes the serving and first good version;
- ``promote``: a candidate (or an operator's choice) serves; the previous serving version is
  retired (still good, a rollback target);
- ``hold``: a candidate is kept back; nothing changes what serves;
- ``rollback``: the serving version is marked rolled back and the last good version before it
  serves again.

>>> d = adopt("dqn", 1, now=0.0)
>>> d = promote(d, 2, by="gate", reason="cleared", now=1.0)
>>> d.serving_version, d.good, [(v.version, v.status) for v in d.versions]
(2, [1, 2], [(1, 'retired'), (2, 'serving')])
>>> d = rollback(d, by="gate", reason="live reward below its estimate", now=2.0)
>>> d.serving_version, d.good, d.status(2).status
(1, [1], 'rolled_back')
>>> rollback(d, by="operator", reason="by hand", now=3.0)
Traceback (most recent call last):
...
ValueError: dqn: version 1 is the only good version; there is nothing to roll back to
"""

from __future__ import annotations

from collections.abc import Iterable

from shelfq.contracts.decisions import MAX_GOOD, MAX_VERSIONS, By, Figures, Interval, ModelDecision, Status, VersionStatus

#: What ``shelfq models list`` says of a version.
SHADOW, SKIPPED = "shadow", "skipped"


def _with(versions: Iterable[VersionStatus], *changed: VersionStatus) -> list[VersionStatus]:
    by_version = {v.version: v for v in versions}
    for c in changed:
        by_version[c.version] = c
    return [by_version[v] for v in sorted(by_version)][-MAX_VERSIONS:]


def _status(last: ModelDecision | None, version: int, status: Status, now: float, *, reason: str | None = None,
            snips: Interval | None = None, dr: Interval | None = None) -> VersionStatus:
    """``version``'s new status; its estimates and reason stay what they were unless given."""
    old = last.status(version) if last is not None else None
    was = old if old is not None else VersionStatus(version=version, status=status, ts=now)
    return VersionStatus(version=version, status=status, ts=now, snips=was.snips if snips is None else snips,
                         dr=was.dr if dr is None else dr, reason=was.reason if reason is None else reason)


def adopt(policy: str, version: int, now: float, reason: str = "") -> ModelDecision:
    """The first decision of ``policy``: ``version`` (what its agents serve now) serves."""
    return ModelDecision(policy=policy, serving_version=version, action="adopt", version=version, by="gate", ts=now,
                         reason=reason or "the policy's first decision: the version its agents serve now",
                         versions=[VersionStatus(version=version, status="serving", ts=now)], good=[version])


def promote(last: ModelDecision, version: int, *, by: By, reason: str, now: float, forced: bool = False,
            figures: Figures | None = None, snips: Interval | None = None, dr: Interval | None = None) -> ModelDecision:
    """``version`` serves; the version serving before is retired (still good)."""
    if version == last.serving_version:
        raise ValueError(f"{last.policy}: version {version} already serves")
    changed = [_status(last, version, "serving", now, reason=reason, snips=snips, dr=dr)]
    old = last.status(last.serving_version)
    if old is None or old.status == "serving":
        changed.append(_status(last, last.serving_version, "retired", now))
    good = [v for v in last.good if v != version] + [version]
    return ModelDecision(policy=last.policy, serving_version=version, action="promote", version=version, by=by,
                         ts=now, reason=reason, forced=forced, figures=figures,
                         versions=_with(last.versions, *changed), good=good[-MAX_GOOD:])


def hold(last: ModelDecision, version: int, *, reason: str, now: float, figures: Figures | None = None,
         snips: Interval | None = None, dr: Interval | None = None) -> ModelDecision:
    """``version`` is held back; the serving version stays."""
    return ModelDecision(policy=last.policy, serving_version=last.serving_version, action="hold", version=version,
                         by="gate", ts=now, reason=reason, figures=figures,
                         versions=_with(last.versions, _status(last, version, "held", now, reason=reason, snips=snips,
                                                               dr=dr)),
                         good=list(last.good))


def rollback_target(last: ModelDecision) -> int | None:
    """The last good version before the serving one, or None."""
    earlier = [v for v in last.good if v != last.serving_version]
    return earlier[-1] if earlier else None


def rollback(last: ModelDecision, *, by: By, reason: str, now: float, figures: Figures | None = None) -> ModelDecision:
    """The serving version is rolled back; the last good version before it serves again."""
    target = rollback_target(last)
    if target is None:
        raise ValueError(f"{last.policy}: version {last.serving_version} is the only good version; there is nothing "
                         "to roll back to")
    bad = last.serving_version
    changed = [_status(last, bad, "rolled_back", now, reason=reason), _status(last, target, "serving", now)]
    return ModelDecision(policy=last.policy, serving_version=target, action="rollback", version=bad, by=by,
                         ts=now, reason=reason, figures=figures, versions=_with(last.versions, *changed),
                         good=[v for v in last.good if v != bad])


def statuses(last: ModelDecision | None, versions: Iterable[int]) -> dict[int, str]:
    """What each version on ``models`` is: its decided status, ``shadow`` (newer than every
    decided version: the candidate, or waiting to be one) or ``skipped`` (older than a decided
    version and never judged: a newer one came first). Without decisions the newest serves.

    >>> d = promote(adopt("dqn", 2, now=0.0), 4, by="gate", reason="", now=1.0)
    >>> statuses(d, [1, 2, 3, 4, 5])
    {1: 'skipped', 2: 'retired', 3: 'skipped', 4: 'serving', 5: 'shadow'}
    >>> statuses(None, [1, 2])
    {1: 'skipped', 2: 'serving'}
    """
    versions = sorted(set(versions))
    if last is None:
        return {v: ("serving" if v == versions[-1] else SKIPPED) for v in versions}
    decided = {v.version: v.status for v in last.versions}
    newest_decided = max(decided, default=last.serving_version)
    return {v: decided.get(v, SHADOW if v > newest_decided else SKIPPED) for v in versions}


def candidate(last: ModelDecision, versions: Iterable[int]) -> int | None:
    """The version to judge next: the newest one newer than every decided version."""
    shadow = [v for v, s in statuses(last, versions).items() if s == SHADOW]
    return max(shadow) if shadow else None
