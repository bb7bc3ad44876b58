"""One exception hierarchy for every part of shelfq.

Callers catch ``ShelfqError`` for anything shelfq raises on purpose; the subclasses say which
layer refused and carry the facts an operator needs (the field, the log path, the drift).
"""

from __future__ import annotations


class ShelfqError(Exception):
    """Base class of every error shelfq raises on purpose."""


class ConfigError(ShelfqError, ValueError):
    """A setting is impossible: wrong type, out of range, or contradicting another setting."""


class EventError(ShelfqError, ValueError):
    """An event failed validation.

    ``field`` is the path of the offending field (``"slate_size"``, ``"candidates[3]"``,
    ``""`` for the message as a whole), ``kind`` a short stable code (``missing``,
    ``wrong_type``, ``out_of_range``, ``too_many``, ``too_large``, ``non_finite``,
    ``unknown_schema``, ``wrong_kind``, ``malformed``, ``invalid``) and ``problem`` the
    human-readable explanation.
    """

    def __init__(self, field: str, kind: str, problem: str) -> None:
        self.field = field
        self.kind = kind
        self.problem = problem
        where = field if field else "message"
        super().__init__(f"{where}: {problem}")


class BrokerError(ShelfqError):
    """The embedded broker could not be resolved, formatted, started or stopped."""


class TopicDriftError(ShelfqError):
    """Existing topics differ from their definitions in a way shelfq will not fix by itself."""

    def __init__(self, drift: list[str]) -> None:
        self.drift = drift
        super().__init__("topic drift:\n  " + "\n  ".join(drift))
