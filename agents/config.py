"""Settings of the scoring agent, from ``SHELFQ_AGENT_*`` variables (flags override).

>>> AgentConfig.from_env({"SHELFQ_AGENT_EXPLORATION": "boltzmann", "SHELFQ_AGENT_TEMPERATURE": "0.5"}).temperature
0.5
>>> AgentConfig(exploration="softmax")
Traceback (most recent call last):
...
shelfq.contracts.errors.ConfigError: agent: exploration must be greedy, epsilon or boltzmann; got 'softmax'
>>> AgentConfig.from_env({"SHELFQ_AGENT_EXCLUDE_SEEN": "clicked"}).exclude_seen, AgentConfig().exclude_seen
('clicked', 'purchased')
>>> AgentConfig(exclude_seen="viewed")
Traceback (most recent call last):
...
shelfq.contracts.errors.ConfigError: agent: exclude_seen must be none, purchased or clicked; got 'viewed'
>>> [a.name for a in AgentConfig.from_env({"SHELFQ_AGENT_ARMS": "a=dqn-a:1,b=dqn-b:1"}).served_arms()]
['a', 'b']
>>> AgentConfig(arms="a=dqn:-1")
Traceback (most recent call last):
...
shelfq.contracts.errors.ConfigError: agent: arms: arm 'a' has weight -1.0; a weight is a finite number > 0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shelfq.agents.arms import Arm, parse_arms
from shelfq.agents.exclusion import SEEN_EVENTS
from shelfq.contracts.errors import ConfigError
from shelfq.contracts.settings import fields_from_env

ENV_PREFIX = "SHELFQ_AGENT_"
EXPLORATIONS = ("greedy", "epsilon", "boltzmann")
EXCLUDE_SEEN = tuple(SEEN_EVENTS)  # none, purchased, clicked


@dataclass(frozen=True)
class AgentConfig:
    """How the agent answers requests."""

    policy: str = "dqn"
    """Which model (the key on ``models``) to serve; slates name the policy that chose them."""
    arms: str = ""
    """An experiment: arms as ``name=policy:weight`` entries separated by commas, e.g.
    ``longterm=dqn-longterm:0.5,myopic=dqn-myopic:0.5``. Each user is served by one arm for good
    (a stable hash of the user id, the same on every replica), each arm by its own model with
    the fallbacks until it arrives; slates name their arm. Empty: no experiment, ``policy``
    serves everyone and slates name no arm."""
    exploration: str = "epsilon"
    """greedy, epsilon (epsilon-greedy per position) or boltzmann (Plackett-Luce sampling)."""
    epsilon: float = 0.1
    """Chance of a uniform draw at each position (epsilon-greedy)."""
    temperature: float = 1.0
    """Softmax temperature of the Boltzmann draws (lower is greedier)."""
    diversity: float = 0.0
    """Weight of the MMR penalty for repeating a category already in the slate (0 = off)."""
    exclude_seen: str = "purchased"
    """Leave out of a user's slates the items the request's state (user-state: the last N
    interactions) shows they already bought (purchased), or clicked, added to cart or bought
    (clicked), or none. Purchased is the default because it is what shops expect: an item just
    bought is a wasted slot and looks careless; a clicked item is often one the user is still
    deciding on, and showing it again is a deliberate choice a shop makes (``clicked``)."""
    max_candidates: int = 1000
    """Above this many candidates, the top ones by score are shortlisted before exploring."""
    deadline_s: float = 2.0
    """Requests that waited longer than this since they reached Kafka (the broker's append
    time against the agent's clock, not the frontend's ``ts``: ``agents.deadline``) are
    skipped and counted, never answered late."""
    batch_size: int = 64
    """Requests scored together (micro-batch); a batch never waits to fill."""
    commit_interval_s: float = 1.0
    """How often slates are flushed and request offsets committed."""
    popularity_half_life_s: float = 3600.0
    """Half-life of interactions in the popularity fallback."""
    session_timeout_s: float = 10.0
    """How long the group waits for a silent replica before handing its partitions on."""
    seed: int = 0
    """Seeds the exploration draws (each replica adds its own offset)."""
    metrics_port: int = 9103
    """Port of /metrics (0 turns the endpoint off)."""
    metrics_addr: str = "0.0.0.0"
    """Address /metrics listens on."""

    def __post_init__(self) -> None:
        try:
            parse_arms(self.arms)
        except ValueError as exc:
            raise ConfigError(f"agent: {exc}") from None
        if self.exploration not in EXPLORATIONS:
            raise ConfigError(f"agent: exploration must be {', '.join(EXPLORATIONS[:-1])} or {EXPLORATIONS[-1]}; "
                              f"got {self.exploration!r}")
        if self.exclude_seen not in EXCLUDE_SEEN:
            raise ConfigError(f"agent: exclude_seen must be {', '.join(EXCLUDE_SEEN[:-1])} or {EXCLUDE_SEEN[-1]}; "
                              f"got {self.exclude_seen!r}")
        if not 0 <= self.epsilon <= 1:
            raise ConfigError(f"agent: epsilon must be in [0, 1], got {self.epsilon}")
        for name in ("temperature", "deadline_s", "commit_interval_s", "popularity_half_life_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"agent: {name} must be > 0, got {getattr(self, name)}")
        for name in ("max_candidates", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"agent: {name} must be >= 1, got {getattr(self, name)}")
        if self.diversity < 0:
            raise ConfigError(f"agent: diversity must be >= 0, got {self.diversity}")
        if self.session_timeout_s < 6:
            raise ConfigError("agent: session_timeout_s must be >= 6 (heartbeats go every 3 s)")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"agent: metrics_port must be a TCP port or 0, got {self.metrics_port}")

    def served_arms(self) -> tuple[Arm, ...]:
        """The arms this agent serves; without an experiment, one unnamed arm serving ``policy``."""
        return parse_arms(self.arms) or (Arm("", self.policy),)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AgentConfig:
        """Read ``SHELFQ_AGENT_*``; keyword overrides (flags) win; None means unset."""
        return cls(**fields_from_env(cls, ENV_PREFIX, env, **overrides))
