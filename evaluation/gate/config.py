"""Settings of the model gate, from ``SHELFQ_GATE_*`` variables (flags override).

>>> GateConfig.from_env({"SHELFQ_GATE_WINDOW": "500", "SHELFQ_GATE_MARGIN": "0.1"}).window
500
>>> GateConfig(margin=-0.1)
Traceback (most recent call last):
...
shelfq.contracts.errors.ConfigError: gate: margin must be in [0, 1), got -0.1
>>> GateConfig.from_env({"SHELFQ_GATE_POLICIES": "dqn-a, dqn-b"}).policy_keys()
('dqn-a', 'dqn-b')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.settings import fields_from_env

ENV_PREFIX = "SHELFQ_GATE_"
EXPLORATIONS = ("greedy", "epsilon", "boltzmann")


@dataclass(frozen=True)
class GateConfig:
    """How the gate judges model versions."""

    policies: str = "dqn"
    """The policy keys on ``models`` the gate decides for, separated by commas (one gate per
    policy: two deciders of one policy would overwrite each other's decisions)."""
    window: int = 2000
    """Impressions in the evaluation window: the most recent complete impressions of the
    policy's logged traffic (transitions whose ``policy`` is the key), on which a candidate and
    the serving version are both estimated."""
    min_impressions: int = 300
    """A candidate is not judged before the window holds this many impressions (it stays in
    shadow); nor is a serving version's live reward."""
    positions: int = 1
    """Slate positions estimated: the value is the expected reward of the first ``positions``
    items. Prefix importance weights multiply over positions, so each position more costs
    effective sample size (a candidate far from the logging policy soon has none); 0 takes the
    whole slate."""
    margin: float = 0.05
    """A candidate is promoted when the lower bound of its 95% interval clears the serving
    version's estimate minus this share of it, for SNIPS and DR alike; else it is held back."""
    min_ess: float = 30.0
    """A candidate whose importance weights have a smaller effective sample size on the window
    is held back: the logged traffic says too little about what it would do."""
    rollback_after_s: float = 120.0
    """A serving version whose live reward per impression stays below its own estimate's
    interval (DR's, from when it was promoted) this long is rolled back to the last good one."""
    live_window: int = 500
    """The serving version's most recent impressions that its live reward is measured on."""
    interval_s: float = 10.0
    """How often the gate judges (each judgement scores the window with two models)."""
    exploration: str = "epsilon"
    """How the agents explore, so that the candidate is estimated as it would be served:
    greedy, epsilon or boltzmann (set it as ``SHELFQ_AGENT_EXPLORATION``)."""
    epsilon: float = 0.1
    """The agents' epsilon (``SHELFQ_AGENT_EPSILON``)."""
    temperature: float = 1.0
    """The agents' Boltzmann temperature (``SHELFQ_AGENT_TEMPERATURE``)."""
    max_candidates: int = 1000
    """The agents' shortlist size (``SHELFQ_AGENT_MAX_CANDIDATES``)."""
    metrics_port: int = 9106
    """Port of /metrics (0 turns the endpoint off)."""
    metrics_addr: str = "0.0.0.0"
    """Address /metrics listens on."""

    def __post_init__(self) -> None:
        if not self.policy_keys():
            raise ConfigError("gate: policies names no policy")
        if self.exploration not in EXPLORATIONS:
            raise ConfigError(f"gate: exploration must be greedy, epsilon or boltzmann; got {self.exploration!r}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"gate: margin must be in [0, 1), got {self.margin}")
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"gate: epsilon must be in [0, 1], got {self.epsilon}")
        for name in ("window", "min_impressions", "live_window", "max_candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gate: {name} must be >= 1, got {getattr(self, name)}")
        if self.min_impressions > self.window:
            raise ConfigError(f"gate: min_impressions ({self.min_impressions}) exceeds the window ({self.window})")
        for name in ("rollback_after_s", "interval_s", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"gate: {name} must be > 0, got {getattr(self, name)}")
        if self.positions < 0 or self.min_ess < 0:
            raise ConfigError("gate: positions and min_ess must be >= 0")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"gate: metrics_port must be a TCP port or 0, got {self.metrics_port}")

    def policy_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.strip() for p in self.policies.split(",") if p.strip()))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> GateConfig:
        """Read ``SHELFQ_GATE_*``; keyword overrides (flags) win; None means unset."""
        return cls(**fields_from_env(cls, ENV_PREFIX, env, **overrides))
