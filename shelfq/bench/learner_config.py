"""What ``shelfq bench learner`` (``shelfq.bench.learner``) runs besides the learner's own
settings, apart from it: the command line reads it for its flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from shelfq.contracts.errors import ConfigError


@dataclass(frozen=True)
class LearnerBenchConfig:
    """What ``shelfq bench learner`` loads; the learner trains with its own settings (``LearnerConfig``).

    >>> LearnerBenchConfig(transitions=999)
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.ConfigError: bench learner: --transitions must be at least 1000
    """

    transitions: int = 100_000
    """Transitions to load and train on."""

    def __post_init__(self) -> None:
        if self.transitions < 1000:
            raise ConfigError("bench learner: --transitions must be at least 1000")
