"""Double DQN over the Q-network: ``learn_one`` transitions, ``train_step`` on batches,
``score`` items for a state. No Kafka here; ``learner.service`` feeds it from the topic.

>>> import msgspec
>>> from shelfq.contracts.examples import EXAMPLES
>>> dqn = DQN(LearnerConfig(batch_size=2, learning_starts=2, replay_capacity=8, candidates=4))
>>> t = EXAMPLES["transitions"][1]
>>> dqn.learn_one(t) is None                            # not enough data for a step yet
True
>>> stats = dqn.learn_one(msgspec.structs.replace(t, transition_id="req-9f1c:2", position=2, action="sku-34"))
>>> stats.step, dqn.learn_one(t)    # 2 transitions x replay_ratio 2 = 2 steps of 2; a repeat is ignored
(2, None)
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from shelfq.contracts.events import Item, State, Transition
from shelfq.learner.candidates import Catalog
from shelfq.learner.columns import LINK_FIELDS, Rows
from shelfq.learner.config import LearnerConfig
from shelfq.learner.device import autocast, pick_device
from shelfq.learner.features import Featurizer
from shelfq.learner.item_features import attribute_rows
from shelfq.learner.next_clicks import NextClicks
from shelfq.learner.network import QNetwork, UserVectors
from shelfq.learner.replay import ReplayBuffer, Sample
from shelfq.learner.sessions import SessionLinks, bootstrap
from shelfq.learner.slateq import item_scores, slate_value
from shelfq.learner.wire import TransitionView


@dataclass(frozen=True, slots=True)
class Batch(Rows[torch.Tensor]):
    """A sampled batch on the training device: the ``Rows`` columns of a ``Sample``, except that
    ``next_items`` and ``next_events`` are the state the target bootstraps from: the row's next
    state, or with n-step returns the one after the last slate of its session followed
    (``learner.sessions``); so the context too. ``dones`` is folded into ``discounts``."""

    next_context: torch.Tensor
    next_context_weights: torch.Tensor
    next_rewards: torch.Tensor
    """The discounted rewards of the session's next slates followed (0 with one-step targets)."""
    discounts: torch.Tensor
    """What multiplies the bootstrapped value: gamma^k times 0 where the session ended on the way."""
    weights: torch.Tensor
    uniform: int
    """The first ``uniform`` rows were drawn from all transitions (the rest from clicked ones)."""


#: The tensor dtype of a column by its numpy kind: rows (ints) index embeddings.
_TENSOR_DTYPES = {"i": torch.long, "u": torch.long, "f": torch.float32, "b": torch.bool}
CLICKED_SHARE = 0.5  # of a SlateQ batch: drawn from clicked transitions, which teach the value


class StepStats(NamedTuple):
    step: int
    loss: float
    td_error: float
    mean_q: float


class Deduper:
    """Remembers the last ``capacity`` transition_ids (at-least-once delivery repeats some)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def keys(self) -> list[str]:
        return list(self._seen)

    def load(self, keys: Sequence[str]) -> None:
        self._seen = OrderedDict.fromkeys(keys[-self.capacity:])


class DQN:
    """An online double-DQN learner with a replay buffer, a target network and a catalog of
    candidate items for the max over next actions."""

    def __init__(self, config: LearnerConfig, device: torch.device | str | None = None) -> None:
        self.config = config
        self.device = pick_device(config.device if device is None else str(device))
        torch.manual_seed(config.seed)
        self.online = QNetwork(config).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=config.learning_rate, fused=True)
        self.features = Featurizer(config.hash_buckets, config.history_length, config.context_buckets,
                                   config.slate_size)
        self.replay = ReplayBuffer(config.replay_capacity, config.history_length, slate_width=config.slate_size,
                                   prioritized=config.prioritized,
                                   alpha=config.priority_alpha, beta=config.priority_beta, seed=config.seed)
        self.catalog = Catalog(seed=config.seed)
        self.next_clicks = NextClicks(config.hash_buckets, config.next_clicks) if self.online.next_clicks else None
        self.dedupe = Deduper(config.dedupe_capacity)
        self.links = SessionLinks(config.dedupe_capacity)  # as many sessions as ids remembered, at most
        self.step = 0
        self.duplicates = 0
        self.credit = 0.0  # transitions consumed but not yet trained on (x replay_ratio); checkpointed

    # -- online API --------------------------------------------------------------------------

    def add(self, t: Transition | TransitionView) -> bool:
        """Store one transition unless its id was seen; True when it was new."""
        return self.add_rows(self.features.rows([t]), [t.transition_id], [t.slate], [t.action]) == 1

    def add_rows(self, rows: dict[str, np.ndarray], ids: Sequence[str], slates: Sequence[Sequence[str]],
                 actions: Sequence[str]) -> int:
        """Store featurized transitions (``Featurizer.rows``) whose ids were not seen; returns how
        many were new. ``slates`` and ``actions`` feed the catalog of candidates."""
        keep = np.fromiter((self.dedupe.first_time(i) for i in ids), dtype=bool, count=len(ids))
        new = int(keep.sum())
        self.duplicates += len(ids) - new
        if new == 0:
            return 0
        if new < len(ids):
            rows = {name: column[keep] for name, column in rows.items()}
        first = self.replay.added
        self.replay.add(rows)
        if self.config.n_step > 1 and all(name in rows for name in LINK_FIELDS):
            numbers = first + np.arange(new)
            sessions, requests, ts = (rows[name] for name in LINK_FIELDS)
            for linked, successor in self.links.add(numbers, sessions, requests, ts, rows["rewards"]):
                self.replay.link(linked, successor)
        if self.next_clicks is not None:
            self.count_next_clicks(rows)
        observe, rewards = self.catalog.observe, rows["rewards"].tolist()
        for slate, action, reward in zip((s for s, k in zip(slates, keep) if k),
                                         (a for a, k in zip(actions, keep) if k), rewards):
            observe(slate, action, reward)
        self.credit += new * self.config.replay_ratio
        return new

    def due(self) -> bool:
        """Whether the transitions added so far pay for another step (``replay_ratio``)."""
        return self.credit >= self.config.batch_size and len(self.replay) >= self.config.learning_starts

    def train_due(self) -> StepStats | None:
        """Train as many steps as the transitions added since the last call pay for."""
        stats = None
        while self.due():
            stats = self.train_step(self.sample())
        return stats

    def learn_one(self, t: Transition) -> StepStats | None:
        """``add`` then ``train_due``: the river-style entry point."""
        return self.train_due() if self.add(t) else None

    @torch.no_grad()
    def score(self, state: State, item_ids: Sequence[str]) -> np.ndarray:
        """Each item's score for one state, as the agent ranks (position bias left out): Q(s, a),
        or with SlateQ the value of the item shown alone."""
        self.online.eval()
        user = self.online.user(*self.state_tensors([state]))
        rows = self.item_rows(item_ids)
        q = self.online.q_candidates(user, rows)
        if user.click is not None:
            q = item_scores(q, self.online.click_logits(user, rows), user.no_click)
        self.online.train()
        return q[0].float().cpu().numpy()

    # -- training ----------------------------------------------------------------------------

    def sample(self) -> tuple[Batch, torch.Tensor, np.ndarray]:
        """A replay batch, the candidate rows for s' and the sampled slots."""
        cfg = self.config
        s = self.replay.sample(cfg.batch_size, CLICKED_SHARE if cfg.objective == "slateq" else 0.0)
        return self.to_batch(s), self.item_rows(self.catalog.candidates(cfg.candidates, cfg.popular_share)), s.indices

    def to_batch(self, s: Sample) -> Batch:
        dev, a = self.device, self.replay.arrays
        boot = bootstrap(a, self.replay.capacity, s.indices, self.config.gamma, self.config.n_step)

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).to(dev, _TENSOR_DTYPES[x.dtype.kind], non_blocking=True)

        cells = s.cells()
        at = boot.rows
        cells.update(next_items=a["next_items"][at], next_events=a["next_events"][at], next_context=a["context"][at],
                     next_context_weights=a["context_weights"][at], next_rewards=boot.reward, discounts=boot.discount,
                     weights=s.weights)
        return Batch(**{name: t(x) for name, x in cells.items()}, uniform=s.uniform)

    def train_step(self, sampled: tuple[Batch, torch.Tensor, np.ndarray]) -> StepStats:
        """One double-DQN (or SlateQ) update; returns the loss, mean |TD error| and mean Q."""
        b, candidates, indices = sampled
        cfg = self.config
        self.credit = max(0.0, self.credit - cfg.batch_size)
        with autocast(self.device):
            loss, td, q = (self._item_loss if cfg.objective == "item" else self._slateq_loss)(b, candidates)
        # Gradient step with global-norm clipping.
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.online.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        # Priorities follow the new TD errors (item-wise Q only: SlateQ's batches are stratified).
        td_abs = td.detach().abs()
        if cfg.objective == "item":
            self.replay.update_priorities(indices, td_abs.cpu().numpy())
        # Target network: Polyak average (or a copy every target_period steps with tau = 1).
        self.step += 1
        if self.step % cfg.target_period == 0:
            with torch.no_grad():
                for p_t, p in zip(self.target.parameters(), self.online.parameters()):
                    p_t.lerp_(p, cfg.target_tau)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"learner: loss became {loss_value} at step {self.step}; "
                                     "lower learning_rate or check the rewards")
        mean_q = float(q.detach().float().mean()) if len(q) else 0.0
        return StepStats(self.step, loss_value, float(td_abs.mean()) if len(td_abs) else 0.0, mean_q)

    def _item_loss(self, b: Batch, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Double DQN on every shown item: (loss, TD errors, Q of the logged actions)."""
        cfg = self.config
        # Q(s, a) of the logged actions, with the position offset.
        q = self.online.logged(b.items, b.events, b.context, b.context_weights, b.actions, b.positions).q
        with torch.no_grad():
            if cfg.gamma > 0:
                # Double DQN: the online net picks a' in C, the target net values it.
                next_online = self.online.user(b.next_items, b.next_events, b.next_context, b.next_context_weights)
                best = self.online.q_candidates(next_online, candidates).argmax(dim=1, keepdim=True)
                next_target = self.target.user(b.next_items, b.next_events, b.next_context, b.next_context_weights)
                next_q = self.target.q_candidates(next_target, candidates).gather(1, best).squeeze(1)
            else:
                next_q = torch.zeros_like(b.rewards)  # myopic: the target is the reward alone
            # r + gamma * (1 - done) * Q_target(s', argmax_a' Q(s', a')) (n-step: the session's next rewards first)
            y = b.rewards + b.next_rewards + b.discounts * next_q.float()
        # Huber loss, weighted by importance sampling when replay is prioritized.
        loss = (b.weights * nn.functional.smooth_l1_loss(q.float(), y, reduction="none")).mean()
        return loss, q.float() - y, q

    def _slateq_loss(self, b: Batch, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SlateQ (``learner.slateq``): the choice model on the uniform rows; by TD, the value of
        a click on the clicked rows and the value of no click on the uniform rows of slates that
        got no feedback. Returns (loss, TD errors, Qbar) of the clicked rows."""
        cfg = self.config
        logged = self.online.logged(b.items, b.events, b.context, b.context_weights, b.actions, b.positions, b.slates)
        assert logged.log_click is not None and logged.log_no_click is not None and logged.no_click is not None  # SlateQ's
        # Choice model: the log-likelihood of "clicked" / "not clicked" of shown items, drawn uniformly.
        uniform = torch.arange(len(b.clicks), device=b.clicks.device) < b.uniform
        # Organic impressions (no policy chose them) are left out: they are logged only when clicked.
        choices = uniform & b.chosen
        click_loss = (-torch.where(b.clicks, logged.log_click, logged.log_no_click)[choices].float().mean()
                      if choices.any() else logged.log_click.sum() * 0)
        clicked, quiet = b.clicks, b.quiet & uniform
        valued = (clicked | quiet) & (b.discounts > 0)  # the rows whose target needs a next slate's value
        with torch.no_grad():
            # V(s') of the next slate as the agent would build it, valued by the target network.
            next_v = torch.zeros_like(b.rewards)
            if valued.any():
                nxt: UserVectors = self.target.user(b.next_items[valued], b.next_events[valued],
                                                    b.next_context[valued], b.next_context_weights[valued])
                assert nxt.no_click is not None  # a SlateQ network's
                qbar, logits = self.target.q_and_click_logits(nxt, candidates)
                next_v[valued] = slate_value(qbar.float(), logits.float(), cfg.slate_size,
                                             self.target.position_logits(cfg.slate_size).float(), nxt.no_click.float())
            # r + gamma * (1 - done) * V(s'), for a click and for no click (whose r is 0); with
            # n-step returns, the session's next slates' rewards and exits come first.
            y = b.rewards + b.next_rewards + b.discounts * next_v
        # Huber losses on both values, plus the choice model's log loss.
        q, q_none = logged.q.float(), logged.no_click.float()
        value_loss = nn.functional.smooth_l1_loss(q[clicked], y[clicked]) if clicked.any() else q.sum() * 0
        none_loss = nn.functional.smooth_l1_loss(q_none[quiet], y[quiet]) if quiet.any() else q_none.sum() * 0
        return click_loss + value_loss + none_loss, (q - y)[clicked], q[clicked]

    def set_items(self, items: Sequence[Item]) -> None:
        """Install the category and price band of these catalog items in both networks."""
        if self.config.item_features and len(items):
            rows = self.item_rows([i.item_id for i in items])
            attributes = torch.from_numpy(attribute_rows((i.category, i.price) for i in items))
            self.online.set_item_features(rows, attributes)
            self.target.set_item_features(rows, attributes)

    def count_next_clicks(self, rows: dict[str, np.ndarray]) -> None:
        """Count what each clicked transition's item followed (the newest item of its state's
        history) in the next-clicks table, and copy the rows that changed into both networks."""
        if self.next_clicks is None:
            return
        clicked = rows["clicks"] > 0
        changed = self.next_clicks.observe(rows["items"][clicked, -1], rows["actions"][clicked])
        if changed.size:
            self.load_next_clicks(changed)

    def load_next_clicks(self, rows: np.ndarray | None = None) -> None:
        """Copy the next-clicks table's ``rows`` (all when None) into both networks."""
        table = self.next_clicks
        if table is None:
            return
        index = torch.from_numpy(np.arange(len(table.counts)) if rows is None else rows)
        successors, counts = torch.from_numpy(table.successors[index]), torch.from_numpy(table.counts[index])
        for network in (self.online, self.target):
            network.set_next_clicks(index.to(self.device), successors, counts)

    def set_content(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Install title vectors (content features) for these items in both networks."""
        if self.config.content_dim and len(item_ids):
            rows, vecs = self.item_rows(item_ids), torch.from_numpy(vectors)
            self.online.set_content(rows, vecs)
            self.target.set_content(rows, vecs)

    # -- helpers -----------------------------------------------------------------------------

    def item_rows(self, item_ids: Sequence[str]) -> torch.Tensor:
        """The networks' item embedding rows of these items (hash buckets), on the DQN's device."""
        return torch.from_numpy(self.features.buckets(item_ids)).to(self.device, torch.long)

    def state_tensors(self, states: Sequence[State]) -> tuple[torch.Tensor, ...]:
        """These states as the networks' user-encoder inputs (``QNetwork.user(*tensors)``), on the
        DQN's device."""
        return tuple(torch.from_numpy(a).to(self.device) for a in self.features.states(states))
