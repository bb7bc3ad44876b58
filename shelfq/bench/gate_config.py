"""What ``shelfq bench gate`` runs (``shelfq.bench.gate``), apart from it: the command line
reads these settings for its flags without importing the benchmark (torch, the simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shelfq.evaluation.gate.config import GateConfig


@dataclass(frozen=True)
class GateBenchConfig:
    """What ``shelfq bench gate`` runs; the defaults take about three minutes on 2 cores."""

    logged_sessions: int = 1500
    """Sessions of uniform random slates that the models learn from."""
    first_steps: int = 30
    """Training steps of the first version (serving at the start: a model early in its life)."""
    good_steps: int = 300
    """Training steps of the good version, and of the bad one."""
    reward_scale: float = 10.0
    """The models learn the logged rewards times this (their scores' spread suits ``temperature``)."""
    temperature: float = 0.02
    """Boltzmann temperature of the serving agent (and of the gate's targets)."""
    chunk_sessions: int = 50
    """Live sessions between two judgements."""
    bad_after_sessions: int = 600
    """Live sessions before the bad version is published."""
    max_sessions: int = 3000
    """Live sessions at most: a version still undecided then counts as never promoted."""
    truth_sessions: int = 400
    """Sessions each version serves for its true figures."""
    seed: int = 0
    """Seeds the world's shoppers and the learners."""
    gate: GateConfig = field(default_factory=lambda: GateConfig(window=3000, min_impressions=1500, positions=1,
                                                                margin=0.1, exploration="boltzmann", temperature=0.02))
    """The gate's settings (``evaluation.gate.config``); its temperature is set to ``temperature``."""

    def __post_init__(self) -> None:
        for name in ("logged_sessions", "first_steps", "good_steps", "chunk_sessions", "max_sessions", "truth_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.reward_scale > 0:
            raise ValueError("temperature and reward_scale must be > 0")
