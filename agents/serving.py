"""Which loaded model version serves each policy: the newest, or the one the gate decided.

The agent keeps the versions it has loaded by version (``ServedVersions``, fed by the model
watcher's thread) and serves, per policy:

- with no decision on ``model-decisions`` for the policy: the newest version, as soon as it is
  loaded (how agents served before the gate; what a deployment without ``shelfq gate`` gets);
- with a decision: exactly ``serving_version``, once it is loaded. A newer version is loaded
  and kept (the gate's candidate, in shadow) but not served until a decision names it. If the
  decided version is not on ``models`` (compaction keeps only a policy's newest message once a
  segment is cleaned), the agent says so and serves the newest version it has once it has read
  the topic to its end.

It keeps the newest ``keep`` versions of each policy, plus the decided one and the decision's
most recent rollback targets (``good``), so a promotion or a rollback switches without a reload.

>>> book = ServedVersions(keep=3)
>>> book.add("dqn", 1, "m1"), book.add("dqn", 2, "m2")     # no decision: the newest serves
((1, 'm1'), (2, 'm2'))
>>> book.decide("dqn", 1, good=[1])                         # the gate says 1: back to it
(1, 'm1')
>>> book.add("dqn", 3, "m3") is None                        # loaded, in shadow, not served
True
>>> book.decide("dqn", 3, good=[1, 3])
(3, 'm3')
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("shelfq.agent")
KEEP = 4  # newest versions kept per policy, beside the decided one and its rollback targets
ROLLBACK_TARGETS = 2  # of a decision's good versions (before the serving one), kept loaded


class ServedVersions:
    """Loaded models by policy and version, the decided version per policy, and what serves.

    Every method returns ``(version, model)`` when the serving model of the policy changes
    (the caller swaps it in), else None. Thread-safe: the watcher's thread calls them."""

    def __init__(self, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.keep = keep
        self.loaded: dict[str, dict[int, Any]] = {}
        self.decided: dict[str, int] = {}
        self.good: dict[str, list[int]] = {}
        self.serving: dict[str, int] = {}
        self.caught_up = False
        self._missing_said: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def add(self, policy: str, version: int, model: Any) -> tuple[int, Any] | None:
        with self._lock:
            self.loaded.setdefault(policy, {})[version] = model
            self._trim(policy)
            return self._choose(policy)

    def decide(self, policy: str, version: int, good: Sequence[int] = ()) -> tuple[int, Any] | None:
        with self._lock:
            self.decided[policy], self.good[policy] = version, list(good)
            self._trim(policy)
            return self._choose(policy)

    def forget_decision(self, policy: str) -> tuple[int, Any] | None:
        """A tombstone on ``model-decisions``: the policy serves its newest version again."""
        with self._lock:
            self.decided.pop(policy, None)
            return self._choose(policy)

    def read_to_end(self) -> list[tuple[str, int, Any]]:
        """The watcher has read ``models`` to its end offsets of the start: a decided version
        that is not there will not come, so its policy serves the newest one it has."""
        with self._lock:
            self.caught_up = True
            changed = []
            for policy in list(self.loaded):
                chosen = self._choose(policy)
                if chosen is not None:
                    changed.append((policy, *chosen))
            return changed

    def wanted(self, policy: str) -> int | None:
        """The version the policy should serve: the decided one, else the newest loaded."""
        decided = self.decided.get(policy)
        if decided is not None:
            return decided
        loaded = self.loaded.get(policy)
        return max(loaded) if loaded else None

    def _choose(self, policy: str) -> tuple[int, Any] | None:
        loaded = self.loaded.get(policy, {})
        want = self.wanted(policy)
        if want is None:
            return None
        if want not in loaded:
            if not (self.caught_up and loaded):
                return None  # it may still come: keep serving what serves
            if (policy, want) not in self._missing_said:
                self._missing_said.add((policy, want))
                log.warning("model-decisions says %s serves version %d, which is not on the models topic (compacted "
                            "away, or rejected); serving the newest loaded version, %d", policy, want, max(loaded))
            want = max(loaded)
        if self.serving.get(policy) == want:
            return None
        self.serving[policy] = want
        return want, loaded[want]

    def _trim(self, policy: str) -> None:
        loaded = self.loaded.get(policy, {})
        keep = set(sorted(loaded)[-self.keep:])
        keep |= {v for v in (self.decided.get(policy), self.serving.get(policy)) if v is not None}
        keep |= set(self.good.get(policy, [])[-(ROLLBACK_TARGETS + 1):])
        for version in [v for v in loaded if v not in keep]:
            del loaded[version]
