"""Settings of the learning benchmark (``evaluation.benchmark``, ``shelfq bench policy``); light
to import, so the command line can build its flags from them."""

from __future__ import annotations

from dataclasses import dataclass

from shelfq.learner.config import LearnerConfig
from shelfq.simulator.world import WorldConfig


@dataclass(frozen=True)
class PolicyBenchConfig:
    """What ``shelfq bench policy`` runs; the defaults fit about 15 minutes on 2 cores."""

    logged_sessions: int = 12_000
    """Sessions the exploring (uniform random) policy serves to make the training logs."""
    returning_users: int = 1_500
    """Shoppers 0..returning_users-1 are logged and come back in evaluation; the rest of the
    population (``world.users``) are new shoppers, never logged."""
    training_seeds: int = 3
    """Learners trained per objective (different weights, sampling and candidate draws)."""
    eval_seeds: int = 3
    """Evaluation runs per policy (different sessions of the same shoppers)."""
    eval_sessions: int = 400
    """Sessions per evaluation seed and shopper group."""
    steps: int = 3_000
    """Gradient steps of each learner on the logged transitions."""
    gamma: float = 0.9
    """Discount of the long-term learner (the myopic one has 0)."""
    slate_size: int = 10
    """Items per slate, logging and evaluation alike."""
    world: WorldConfig = WorldConfig()
    """The simulated shop (``simulator.world``); its defaults, never tuned to the learner."""
    learner: LearnerConfig = LearnerConfig(replay_capacity=1_000_000)
    """The learners' settings (gamma and seed are set per learner); replay holds every log."""

    def __post_init__(self) -> None:
        if not 1 <= self.returning_users < self.world.users:
            raise ValueError(f"returning_users must be in 1..{self.world.users - 1} (some shoppers stay new), "
                             f"got {self.returning_users}")
        for name in ("logged_sessions", "training_seeds", "eval_seeds", "eval_sessions", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma of the long-term learner must be in (0, 1), got {self.gamma}")

    @classmethod
    def quick(cls) -> PolicyBenchConfig:
        """A few seconds' version for tests: the same pipeline, tiny budgets."""
        return cls(logged_sessions=300, returning_users=60, training_seeds=2, eval_seeds=2, eval_sessions=30,
                   steps=20, world=WorldConfig(items=60, users=100),
                   learner=LearnerConfig(replay_capacity=10_000, batch_size=64, learning_starts=64))
