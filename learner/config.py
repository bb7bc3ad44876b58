"""Hyperparameters and runtime settings of the learner, from ``SHELFQ_LEARNER_*`` variables.

Every field reads from ``SHELFQ_LEARNER_<FIELD>`` (upper case); flags override.

>>> c = LearnerConfig.from_env({"SHELFQ_LEARNER_GAMMA": "0", "SHELFQ_LEARNER_ENCODER": "cnn"})
>>> c.gamma, c.encoder
(0.0, 'cnn')
>>> LearnerConfig(encoder="transformer")
Traceback (most recent call last):
...
shelfq.contracts.errors.ConfigError: learner: encoder must be one of gru, lstm, cnn; got 'transformer'
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import MAX_SLATE_SIZE
from shelfq.contracts.settings import fields_from_env

ENCODERS = ("gru", "lstm", "cnn")
OBJECTIVES = ("item", "slateq")
ENV_PREFIX = "SHELFQ_LEARNER_"

#: Fields that shape the network: a model message carries them, and a loader needs them.
NETWORK_FIELDS = ("encoder", "embedding_dim", "hidden_dim", "hash_buckets", "history_length",
                  "context_buckets", "content_dim", "position_bias", "objective", "item_features", "affinity", "next_clicks",
                  "next_click_prior")


@dataclass(frozen=True)
class LearnerConfig:
    """The learner's settings. Network-shaping fields travel with every model."""

    # -- the Q-network -----------------------------------------------------------------------
    encoder: str = "gru"
    """Sequence encoder over the user's recent items: gru, lstm or cnn (1-D convolution)."""
    embedding_dim: int = 32
    """Width of item, event and context embeddings."""
    hidden_dim: int = 32
    """Width of the encoder's state and of the dueling head (64 costs ~2x per step on a CPU)."""
    hash_buckets: int = 1 << 15
    """Rows of the hashed item-id table: ids never seen before still get a (shared) row."""
    history_length: int = 10
    """Most recent interactions of a state the encoder reads (older ones are dropped); a GRU's
    step time grows linearly with it."""
    context_buckets: int = 1024
    """Rows of the hashed request-context table (``key=value`` strings, numeric keys)."""
    item_features: bool = True
    """Items are their id plus their category and price band from ``items`` (``learner.item_features``):
    what one item teaches carries to the others of its kind, and an item never shown is
    scored as its kind instead of as an average item."""
    affinity: bool = True
    """Cross features of each candidate with the user's history (``learner.affinity``: clicks,
    carts and purchases of the same item and of its category) add a click and a value term:
    a shopper's taste reaches their next slate without waiting for the encoder to learn it."""
    next_clicks: int = 0
    """With ``affinity``: per item, how many of the items clicked right after it the learner
    counts (``learner.next_clicks``), read as two more cross features (what follows what, as
    a Markov chain on clicks knows it); 0 turns them off. For shops whose clicks come in
    sequences (series, sizes, accessories): 16 took ``shelfq bench replay``'s second-half HR@10
    from 0.17 to 0.37, while in ``shelfq bench policy``, whose shoppers' clicks have no order,
    it cost 8-15% of the reward per session, hence off by default. The table is part of the
    model: 8 bytes x ``next_clicks`` x ``hash_buckets`` (4 MiB for 16 at the default)."""
    next_click_prior: bool = False
    """With ``next_clicks``: the click logit also gets the table's add-one log estimate that the
    candidate is clicked next (``learner.affinity.markov_log_prior``), with weight 1, not learnt:
    the choice model starts from what a first-order Markov chain on the clicks says, and the
    network learns the rest. For a shop whose clicks come in sequences and whose learner takes
    few gradient steps (a replay of its log: ``shelfq bench replay`` turns it on), where the
    table's learnt weights stay near their zero start. Off by default: where clicks have no
    order a fixed term would steer every slate toward chance successors."""
    content_dim: int = 0
    """Width of item content vectors (384 with the MiniLM title embedder); 0 turns content off."""
    position_bias: bool = True
    """Learn a per-position reward offset in training (shown position explains clicks too); it
    is left out when ranking, so the policy ranks items, not slots."""

    # -- the DQN update ----------------------------------------------------------------------
    objective: str = "slateq"
    """What Q means and how slates are valued. ``slateq``: Q is an item's value given a click,
    a click head learns which items get clicked, and a slate is worth the click-weighted
    value of its items (``learner.slateq``). ``item``: Q(s, a) of each shown item on its own,
    averaged over clicks and no-clicks, and slates are ranked by it."""
    slate_size: int = 10
    """Size of the next slate in SlateQ's target (the agent's usual slate size)."""
    gamma: float = 0.9
    """Discount; 0 gives the myopic click-greedy baseline with the same code."""
    n_step: int = 1
    """Slates of the session a target follows before it bootstraps (``learner.sessions``): 1 is
    the one-step target; 2 and 3 also see what a click did to the slates after the next."""
    batch_size: int = 256
    """Transitions per gradient step."""
    learning_rate: float = 1e-3
    """Adam step size."""
    target_tau: float = 0.01
    """Polyak rate of the target network per step; 1.0 with ``target_period`` > 1 is a copy."""
    target_period: int = 1
    """Steps between target updates (1 with a small tau: Polyak averaging)."""
    max_grad_norm: float = 10.0
    """Gradients are clipped to this global norm."""
    candidates: int = 64
    """Size of the candidate set for the max over a' in s' (popular items plus a catalog sample)."""
    popular_share: float = 0.5
    """Share of the candidate set taken by the most popular items; the rest is sampled."""

    # -- replay ------------------------------------------------------------------------------
    replay_capacity: int = 100_000
    """Transitions the replay buffer keeps (the oldest are overwritten)."""
    prioritized: bool = False
    """Sample by TD error (proportional prioritized replay) instead of uniformly."""
    priority_alpha: float = 0.6
    """How strongly priorities skew sampling (0 = uniform)."""
    priority_beta: float = 0.4
    """Importance-sampling correction of prioritized sampling (1 = full correction)."""
    replay_ratio: float = 2.0
    """At most this many transitions are sampled for training per transition consumed. The
    learner trains as fast as its device allows within that bound, and takes in what arrives
    first: a stream faster than training gets about one pass, a quiet one up to this many.
    In ``shelfq bench policy`` two passes earned more than four for both learners (4 over-fits
    the logs: reward per session 8.2 and 9.3 against 9.5 and 10.4)."""
    learning_starts: int = 256
    """Transitions to collect before the first step."""
    dedupe_capacity: int = 200_000
    """transition_ids remembered to drop repeats (at-least-once delivery re-sends some)."""

    # -- runtime -----------------------------------------------------------------------------
    policy: str = "dqn"
    """Policy name: the key of model messages and the slates' ``policy``."""
    publish_every_s: float = 30.0
    """Seconds between model publications (also published after ``publish_every_steps``)."""
    publish_every_steps: int = 1000
    """Steps between model publications."""
    checkpoint_dir: Path = Path(".shelfq/learner")
    """Where checkpoints go; offsets are committed only for what a checkpoint covers."""
    checkpoint_every_s: float = 30.0
    """Seconds between checkpoints (each is followed by an offset commit)."""
    session_timeout_s: float = 10.0
    """How long the group waits for a silent learner before handing its partitions on (a
    restarted learner waits this long for its dead predecessor); librdkafka's default is 45."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, or cuda[:N]."""
    threads: int = 0
    """CPU threads for torch's step; 0 = one per core but one, which the ingestion process
    (decoding, featurizing) keeps busy."""
    seed: int = 0
    """Seeds weights, sampling and candidate draws."""
    metrics_port: int = 9102
    """Port of /metrics (0 turns the endpoint off)."""
    metrics_addr: str = "0.0.0.0"
    """Address /metrics listens on."""
    arm: str = ""
    """Train only on the transitions of this experiment arm (the slates' ``arm``, from the
    agent's ``SHELFQ_AGENT_ARMS``); the others are consumed, committed and counted as skipped.
    Empty: train on every transition."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"learner: objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.slate_size > MAX_SLATE_SIZE:
            raise ConfigError(f"learner: slate_size must be <= {MAX_SLATE_SIZE} (the longest slate), got {self.slate_size}")
        if self.objective == "slateq" and self.prioritized:
            raise ConfigError("learner: prioritized replay is not available with objective slateq "
                              "(its batches are drawn half from clicked transitions)")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"learner: encoder must be one of {', '.join(ENCODERS)}; got {self.encoder!r}")
        positive = ("embedding_dim", "hidden_dim", "hash_buckets", "history_length", "context_buckets",
                    "batch_size", "slate_size", "candidates", "replay_capacity", "dedupe_capacity", "target_period",
                    "publish_every_steps", "n_step")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"learner: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.gamma < 1:
            raise ConfigError(f"learner: gamma must be in [0, 1), got {self.gamma}")
        if not 0 < self.target_tau <= 1:
            raise ConfigError(f"learner: target_tau must be in (0, 1], got {self.target_tau}")
        if self.content_dim < 0 or self.next_clicks < 0:
            raise ConfigError(f"learner: content_dim and next_clicks must be >= 0, got {self.content_dim}, {self.next_clicks}")
        if self.next_click_prior and not (self.next_clicks and self.affinity):
            raise ConfigError("learner: next_click_prior needs the next-clicks table (next_clicks > 0, affinity on)")
        if self.replay_capacity < self.batch_size:
            raise ConfigError(f"learner: replay_capacity ({self.replay_capacity}) must hold a batch ({self.batch_size})")
        if self.session_timeout_s < 6:
            raise ConfigError("learner: session_timeout_s must be >= 6 (heartbeats go every 3 s)")
        for name in ("learning_rate", "max_grad_norm", "publish_every_s", "checkpoint_every_s", "replay_ratio"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"learner: {name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.popular_share <= 1 or not 0 <= self.priority_alpha <= 1 or not 0 <= self.priority_beta <= 1:
            raise ConfigError("learner: popular_share, priority_alpha and priority_beta must be in [0, 1]")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"learner: metrics_port must be a TCP port or 0, got {self.metrics_port}")
        if self.learning_starts < self.batch_size:
            warnings.warn(f"learner: learning_starts {self.learning_starts} < batch_size {self.batch_size}; "
                          "the first steps wait for a full batch anyway", stacklevel=2)
        if self.n_step > 5:
            warnings.warn(f"learner: n_step {self.n_step} > 5 follows the logging policy's slates far; "
                          "its returns are not corrected for it", stacklevel=2)
        if self.gamma > 0.99:
            warnings.warn(f"learner: gamma {self.gamma} > 0.99 makes online targets slow to settle", stacklevel=2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LearnerConfig:
        """Read ``SHELFQ_LEARNER_*``; keyword overrides (flags) win; None means unset."""
        return cls(**fields_from_env(cls, ENV_PREFIX, env, **overrides))

    def network(self) -> dict[str, Any]:
        """The fields that shape the network, as carried in a model's config header."""
        return {name: getattr(self, name) for name in NETWORK_FIELDS}

    def as_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

