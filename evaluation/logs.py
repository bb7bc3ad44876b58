"""Logged traffic for ``shelfq evaluate``: transitions read from the ``transitions`` topic (from
the beginning to the end offsets at the start, no consumer group, nothing committed) or from a
JSON-lines file, grouped into impressions, and the logging policy's figures.

A transition is one shown item of one impression (request_id); repeats of a transition_id
(at-least-once delivery) count once. The figures, per ``policy`` and overall, each with a 95%
interval (``evaluation.estimators.mean_ci``):

- ``ctr``: share of transitions with a click; ``conversion``: share with a purchase. Both are
  clustered by impression (the positions of one slate are not independent).
- ``reward_per_impression`` and ``purchases_per_impression``. Revenue is not derivable: a
  transition counts feedback events (``reward_parts``) but carries no price.
- ``repeat_rate``: for an impression whose user had an earlier one (by ``ts_impression``), the
  share of its items that the previous slate also showed. Lower means fresher slates.
- ``intra_list_diversity`` (catalog categories known): the share of item pairs in a slate whose
  categories differ, over pairs whose categories are both known.
- ``distinct_items`` shown, and ``coverage`` = the share of the catalog's items ever shown
  (when a catalog is known). Counts over the whole log: no interval.

>>> from shelfq.contracts.examples import EXAMPLES
>>> log = Log("example")
>>> log.add(EXAMPLES["transitions"][1])
>>> figures(list(log.impressions.values()))["conversion"]["value"]
1.0
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from shelfq.contracts.errors import EventError, ShelfqError
from shelfq.contracts.events import Item, State, Transition, decode
from shelfq.contracts.kafka import topic_partitions
from shelfq.contracts.settings import Settings
from shelfq.contracts.topics import ITEMS, MODELS, TRANSITIONS
from shelfq.evaluation.estimators import mean_ci
from shelfq.learner.artifact import LoadedModel, load_model

NO_POLICY = "(none)"  # transitions that name no policy
KEEP_ERRORS = 5       # bad records whose reason is kept for the report
STALL_S = 30.0        # no progress for this long while reading to the end offsets: give up


class LoggedPosition(NamedTuple):
    reward: float
    clicks: int
    purchases: int
    propensity: float | None


@dataclass
class LoggedImpression:
    """The transitions of one request_id: its slate, logged state and each position's outcome."""

    request_id: str
    user_id: str
    policy: str
    model_version: int | None
    ts: float
    slate: list[str]
    state: State
    session_id: str = ""
    arm: str | None = None
    """The experiment arm of the slate (None outside an experiment)."""
    positions: dict[int, LoggedPosition] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every shown item has its transition."""
        return len(self.positions) == len(self.slate)


@dataclass
class Log:
    source: str
    impressions: dict[str, LoggedImpression] = field(default_factory=dict)
    read: int = 0        # records (lines, messages) read
    invalid: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        return sum(len(i.positions) for i in self.impressions.values())

    def add(self, t: Transition) -> None:
        imp = self.impressions.get(t.request_id)
        if imp is None:
            imp = self.impressions[t.request_id] = LoggedImpression(
                t.request_id, t.user_id, t.policy or NO_POLICY, t.model_version, t.ts_impression, list(t.slate), t.state,
                t.session_id, t.arm)
        elif t.slate != imp.slate:
            self.bad(f"transition {t.transition_id}: its slate differs from an earlier transition of the same request")
            return
        if t.position in imp.positions:
            self.duplicates += 1
            return
        imp.positions[t.position] = LoggedPosition(t.reward, t.reward_parts.get("click", 0),
                                                   t.reward_parts.get("purchase", 0), t.propensity)

    def bad(self, reason: str) -> None:
        self.invalid += 1
        if len(self.errors) < KEEP_ERRORS:
            self.errors.append(reason)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "read": self.read, "invalid": self.invalid, "duplicates": self.duplicates,
                "transitions": self.transitions, "impressions": len(self.impressions), "errors": self.errors}


# -- reading -----------------------------------------------------------------------------------


def read_file(path: Path, limit: int | None = None, skip_bad: bool = False) -> Log:
    """Transitions from a JSON-lines file (one transition per line, blank lines ignored).

    A bad line stops the read with its line number and reason, unless ``skip_bad`` counts it.
    """
    log = Log(f"file {path}")
    try:
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                if limit is not None and log.read >= limit:
                    break
                if not line.strip():
                    continue
                log.read += 1
                try:
                    log.add(decode(line.rstrip(b"\r\n"), Transition))
                except EventError as exc:
                    if not skip_bad:
                        raise ShelfqError(f"{path}, line {number}: not a valid transition: {exc} "
                                          "(--skip-bad counts bad lines and goes on)") from None
                    log.bad(f"line {number}: {exc}")
    except OSError as exc:
        raise ShelfqError(f"cannot read {path}: {exc.strerror or exc}") from None
    return log


def read_topic(settings: Settings, limit: int | None = None) -> Log:
    """Transitions from the ``transitions`` topic; invalid messages are counted, never fatal."""
    log = Log(f"topic {settings.topic(TRANSITIONS)}")
    for msg in read_to_end(settings, TRANSITIONS, limit=limit):
        log.read += 1
        try:
            log.add(decode(msg.value(), Transition, max_bytes=settings.max_event_bytes))
        except EventError as exc:
            log.bad(f"partition {msg.partition()} offset {msg.offset()}: {exc}")
    return log


def read_catalog(settings: Settings) -> tuple[dict[str, Item], int]:
    """The ``items`` topic as it stands (the newest value per key, tombstones removing), and
    the number of invalid values skipped."""
    items: dict[str, Item] = {}
    invalid = 0
    for msg in read_to_end(settings, ITEMS):
        key = (msg.key() or b"").decode("utf-8", errors="replace")
        if msg.value() is None:
            items.pop(key, None)
            continue
        try:
            item = decode(msg.value(), Item, max_bytes=settings.max_event_bytes)
        except EventError:
            invalid += 1
            continue
        items[item.item_id] = item
    return items, invalid


def newest_model(settings: Settings, policy: str) -> tuple[LoadedModel, int]:
    """The newest model version keyed ``policy`` on ``models`` that passes the loader's checks
    (``learner.artifact.load_model``, as the agent's model watcher uses), and how many newer
    ones were rejected."""
    big = settings.model_max_bytes + (1 << 16)
    best: LoadedModel | None = None
    rejected: dict[int, str] = {}  # version -> why; only those newer than the result count
    # One model in memory at a time: each message is loaded (and checked) only if it is newer
    # than the best so far, so a long models topic does not pile up its versions.
    for msg in read_to_end(settings, MODELS, **{"fetch.max.bytes": big, "max.partition.fetch.bytes": big}):
        if msg.key() != policy.encode():
            continue
        try:
            version = int(dict(msg.headers() or []).get("version") or -1)
        except ValueError:
            version = -1
        if best is not None and version <= best.headers.version:
            continue
        try:
            best = load_model(msg.value(), msg.headers(), policy=policy)
        except EventError as exc:
            rejected[version] = str(exc)
    if best is not None:
        return best, sum(1 for v in rejected if v > best.headers.version)
    reasons = [rejected[v] for v in sorted(rejected, reverse=True)]
    detail = f"; {len(reasons)} rejected, the newest because {reasons[0]}" if reasons else ""
    raise ShelfqError(f"no valid model keyed {policy!r} on {settings.topic(MODELS)}{detail}")


def read_to_end(settings: Settings, logical: str, limit: int | None = None, **config: Any) -> Iterator[Any]:
    """Every message of a topic from the beginning up to the end offsets it had when called,
    with no consumer group (nothing is committed) and at most ``limit`` messages."""
    topic = settings.topic(logical)
    consumer = Consumer(settings.confluent_config(**{
        "group.id": f"{settings.topic_prefix}evaluate-{uuid.uuid4().hex[:8]}",  # required; never joined
        "enable.auto.commit": False, "enable.partition.eof": False, **config}))
    try:
        ends = {}
        for p in topic_partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        count, progress = 0, time.monotonic()
        while ends and (limit is None or count < limit):
            for msg in consumer.consume(500, 0.5):
                error = msg.error()
                if error is not None:
                    if error.fatal() or not error.retriable():
                        raise ShelfqError(f"consumer error on {topic}: {error.str()}")
                    continue
                progress = time.monotonic()
                partition, offset = msg.partition(), msg.offset()
                if (partition in ends and offset is not None and offset < ends[partition]
                        and (limit is None or count < limit)):
                    count += 1
                    yield msg
            # Positions, not the last message: a partition may end in markers nobody receives.
            for tp in consumer.position([TopicPartition(topic, p) for p in list(ends)]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
            if ends and time.monotonic() - progress > STALL_S:
                raise ShelfqError(f"reading {topic}: no progress for {STALL_S:.0f} s with partitions "
                                  f"{sorted(ends)} short of their end offsets")
    finally:
        consumer.close()


# -- figures -----------------------------------------------------------------------------------


def figures(impressions: Sequence[LoggedImpression], catalog: Mapping[str, Item] | None = None,
            repeats: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The logging policy's figures over ``impressions`` (see the module docstring)."""
    clicked, bought, unit, rewards, purchases = [], [], [], [], []
    per_session: dict[str, float] = defaultdict(float)  # sessions as the log holds them
    for n, imp in enumerate(impressions):
        per_session[imp.session_id] += sum(p.reward for p in imp.positions.values())
        for pos in imp.positions.values():
            clicked.append(float(pos.clicks > 0))
            bought.append(float(pos.purchases > 0))
            unit.append(n)
        rewards.append(sum(p.reward for p in imp.positions.values()))
        purchases.append(float(sum(p.purchases for p in imp.positions.values())))
    repeats = repeat_shares(impressions) if repeats is None else repeats
    repeat = [repeats[i.request_id] for i in impressions if i.request_id in repeats]
    shown = {item for imp in impressions for item in imp.slate}
    diversity = [d for d in (_category_diversity(i.slate, catalog) for i in impressions) if d is not None] if catalog else []

    def ci(x: list[float], groups: list[int] | None = None) -> dict[str, Any] | None:
        return mean_ci(x, groups).as_dict() if x else None

    return {
        "impressions": len(impressions), "transitions": len(clicked),
        "ctr": ci(clicked, unit), "conversion": ci(bought, unit),
        "reward_per_impression": ci(rewards), "purchases_per_impression": ci(purchases),
        "sessions": len(per_session), "reward_per_session": ci(list(per_session.values())),
        "repeat_rate": ci(repeat), "intra_list_diversity": ci(diversity),
        "distinct_items": len(shown),
        "coverage": len(shown & catalog.keys()) / len(catalog) if catalog else None,
    }


def logging_figures(log: Log, catalog: Mapping[str, Item] | None = None) -> dict[str, Any]:
    """``{"overall": figures, "by_policy": {policy: figures}, "by_arm": {arm: figures}}`` (arms
    of an experiment; empty outside one); repeats are found across policies and arms (a user's
    previous slate may have come from another one)."""
    everyone = list(log.impressions.values())
    repeats = repeat_shares(everyone)
    by_policy: dict[str, list[LoggedImpression]] = defaultdict(list)
    by_arm: dict[str, list[LoggedImpression]] = defaultdict(list)
    for imp in everyone:
        by_policy[imp.policy].append(imp)
        if imp.arm is not None:
            by_arm[imp.arm].append(imp)
    return {"overall": figures(everyone, catalog, repeats),
            "by_policy": {p: figures(imps, catalog, repeats) for p, imps in sorted(by_policy.items())},
            "by_arm": {a: figures(imps, catalog, repeats) for a, imps in sorted(by_arm.items())}}


def repeat_shares(impressions: Sequence[LoggedImpression]) -> dict[str, float]:
    """request_id -> the share of its items that its user's previous slate showed too."""
    by_user: dict[str, list[LoggedImpression]] = defaultdict(list)
    for imp in impressions:
        by_user[imp.user_id].append(imp)
    shares = {}
    for imps in by_user.values():
        imps.sort(key=lambda i: (i.ts, i.request_id))
        for before, now in zip(imps, imps[1:]):
            shares[now.request_id] = len(set(now.slate) & set(before.slate)) / len(now.slate)
    return shares


def _category_diversity(slate: Sequence[str], catalog: Mapping[str, Item]) -> float | None:
    known = [c for c in (catalog[i].category if i in catalog else None for i in slate) if c is not None]
    pairs = list(combinations(known, 2))
    return sum(a != b for a, b in pairs) / len(pairs) if pairs else None


def distinct_items(log: Log) -> list[str]:
    """Every item the log's slates showed, in first-seen order: the candidates of a file."""
    return list(dict.fromkeys(item for imp in log.impressions.values() for item in imp.slate))
