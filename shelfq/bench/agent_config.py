"""What ``shelfq bench agent`` (``shelfq.bench.agent``) runs, apart from it: the command line
reads these settings for its flags without importing the benchmark (torch, for the model)."""

from __future__ import annotations

from dataclasses import dataclass

from shelfq.contracts.errors import ConfigError
from shelfq.learner.config import OBJECTIVES


@dataclass(frozen=True)
class AgentBenchConfig:
    """The load ``shelfq bench agent`` offers, and the model it serves.

    >>> AgentBenchConfig(burst=99)
    Traceback (most recent call last):
    ...
    shelfq.contracts.errors.ConfigError: bench agent: --rate and --seconds must be > 0, --burst at least 100
    """

    rate: float = 1000.0
    """Requests/s offered."""
    seconds: float = 10.0
    """How long the offered load lasts."""
    burst: int = 20_000
    """Requests sent at once for the saturation figure."""
    objective: str = "slateq"
    """The served model: slateq (slates built under its click model) or item (item-wise)."""

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.seconds > 0 or self.burst < 100:
            raise ConfigError("bench agent: --rate and --seconds must be > 0, --burst at least 100")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"bench agent: objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
