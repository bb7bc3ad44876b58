"""The policies an agent can answer with, behind one interface: ``rank`` a batch of requests.

- ``DQNPolicy`` scores candidates with the current Q-network (one encoder pass per micro-batch)
  and explores with epsilon-greedy or Boltzmann draws (``agents.exploration``). A SlateQ model
  (``learner.slateq``) also gives each item's click attraction, and its slates are built to
  maximise the value of the whole slate under that click model.
- ``PopularityPolicy`` ranks by recent, reward-weighted interactions: the fallback before any
  model has arrived.
- ``RandomPolicy`` ranks uniformly at random: the fallback of the fallback, and a baseline.

Each returns, per request, a ``SlateChoice`` whose propensities are exact. The same seed gives
the same slates. An ask's ``allowed`` mask (``agents.exclusion``) leaves candidates out of
every policy's slate: they are masked, not removed, so the catalog stays one list object and
its cached item vectors serve; retrieval (the shortlist above ``limit``) takes only allowed
ones, and the draws are over the allowed items alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from shelfq.agents import exploration
from shelfq.contracts.events import DEFAULT_REWARD_WEIGHTS, MAX_SLATE_SIZE, Item, State, UserState
from shelfq.learner import slateq
from shelfq.learner.artifact import LoadedModel
from shelfq.learner.features import Featurizer
from shelfq.learner.item_features import attribute_rows
from shelfq.learner.network import UserVectors

EVENT_WEIGHTS = DEFAULT_REWARD_WEIGHTS
CACHE_FROM = 256  # candidate lists this long (catalogs) keep their item vectors between batches


class SlateChoice(NamedTuple):
    items: list[str]
    scores: list[float]
    propensities: list[float]
    policy: str
    model_version: int | None


class Ask(NamedTuple):
    """One request as a policy sees it: the logged state, its candidates, the slate size, and
    which candidates the slate may hold (a bool mask aligned with them; None: all). The slate
    size is at most the number of allowed candidates. ``user_id`` is whose request it is (the
    learned policies read the state, not the id; the benchmark's oracles read it)."""

    state: State
    candidates: Sequence[str]
    slate_size: int
    allowed: np.ndarray | None = None
    user_id: str | None = None


class Policy(Protocol):
    name: str

    def rank(self, asks: Sequence[Ask], rng: np.random.Generator, limit: int | None = None) -> list[SlateChoice]:
        """One slate per ask; above ``limit`` candidates, the best ``limit`` by score are
        shortlisted first (retrieval), and exploration happens among those."""
        ...


class Explorer(NamedTuple):
    """How scores become a slate: greedy, epsilon (epsilon-greedy) or boltzmann."""

    kind: str = "epsilon"
    epsilon: float = 0.1
    temperature: float = 1.0
    diversity: float = 0.0

    def slate(self, scores: np.ndarray, k: int, rng: np.random.Generator,
              similarity: exploration.Similarity | Sequence[exploration.Similarity] | None,
              choice: slateq.ChoiceModel | None = None,
              allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One request's slate from scores of shape (n,), or a micro-batch's from (B, n) (then
        one similarity per row); ``allowed`` masks candidates out; see ``agents.exploration``."""
        common: dict[str, Any] = {"diversity": self.diversity, "similarity": similarity, "choice": choice, "allowed": allowed}
        if self.kind == "greedy":
            return exploration.greedy(scores, k, **common)
        if self.kind == "boltzmann":
            return exploration.boltzmann(scores, k, temperature=self.temperature, rng=rng, **common)
        if self.kind == "epsilon":
            return exploration.epsilon_greedy(scores, k, epsilon=self.epsilon, rng=rng, **common)
        raise ValueError(f"exploration must be greedy, epsilon or boltzmann, not {self.kind!r}")


def category_similarity(categories: Sequence[str | None]) -> exploration.Similarity:
    """1 between items of the same (known) category, else 0: MMR over categories."""
    labels = np.array([c if c is not None else f"\0{i}" for i, c in enumerate(categories)], dtype=object)
    return lambda chosen, others: (labels[others] == labels[chosen]).astype(float)


def _top(scores: np.ndarray, limit: int | None) -> np.ndarray | None:
    """Indices of the best ``limit`` scores in their original order, or None if all fit."""
    if limit is None or len(scores) <= limit:
        return None
    return np.sort(np.argpartition(-scores, limit - 1)[:limit])  # keep the request's order among them


def _top_allowed(scores: np.ndarray, allowed: np.ndarray | None, limit: int | None) -> np.ndarray | None:
    """Indices of the best ``limit`` allowed scores in their original order, or None if all
    candidates fit (the mask then stays with them). A shortlist holds allowed items only.

    >>> _top_allowed(np.array([5.0, 4.0, 3.0, 2.0]), np.array([False, True, True, True]), 2).tolist()
    [1, 2]
    """
    if allowed is None or limit is None or len(scores) <= limit:
        return _top(scores, limit)
    among = np.flatnonzero(allowed)
    top = _top(scores[among], limit)
    return among if top is None else among[top]


def _shortlisted(ask: Ask, top: np.ndarray | None) -> Ask:
    """The ask narrowed to ``top`` (from ``_top_allowed``): all of them are allowed."""
    return ask if top is None else ask._replace(candidates=[ask.candidates[i] for i in top], allowed=None)


class Scored(NamedTuple):
    """A model's view of one ask's candidates: ``score`` ranks them and is logged; with SlateQ,
    ``qbar`` (value given a click) and the ``choice`` model build the slate."""

    score: np.ndarray
    qbar: np.ndarray | None = None
    choice: slateq.ChoiceModel | None = None


def _choice(candidates: Sequence[str], scores: np.ndarray, order: np.ndarray, probs: np.ndarray, policy: str,
            version: int | None) -> SlateChoice:
    return SlateChoice([candidates[i] for i in order.tolist()], scores[order].tolist(),
                       np.minimum(probs, 1.0).tolist(), policy, version)


class DQNPolicy:
    """Q-network scores, explored. ``model`` may be swapped at any time (``swap``)."""

    #: The catalog's item rows and phi for the model that computed them (``_item_vectors``).
    _catalog_vectors: tuple[LoadedModel, Sequence[str], torch.Tensor, torch.Tensor] | None

    def __init__(self, model: LoadedModel, explorer: Explorer = Explorer(),
                 categories: dict[str, str | None] | None = None, name: str = "dqn") -> None:
        """``name`` is what slates say chose them: the served model's policy key."""
        self.explorer, self.categories, self.name = explorer, categories if categories is not None else {}, name
        self._known: dict[str, Item] = {}  # the catalog as the agent knows it (replaced, never mutated)
        self.swap(model)

    def know_items(self, items: Iterable[Item]) -> None:
        """Catalog items, perhaps newer than the served model: rows the model has no category
        or price band for get theirs, so a new item is scored as its kind from its first
        request, not only once the next model version knows it."""
        fresh = {item.item_id: item for item in items}
        if fresh:
            self._known = {**self._known, **fresh}
            model, features, _odds = self._current
            _install_items(model, features, fresh.values())
            self._catalog_vectors = None  # phi of those rows changed

    def swap(self, model: LoadedModel) -> None:
        """Serve ``model`` from the next batch on (one assignment: atomic for readers)."""
        features = Featurizer(model.config.hash_buckets, model.config.history_length, model.config.context_buckets)
        _install_items(model, features, self._known.values())
        # What each slate position multiplies a SlateQ model's click odds by.
        odds = np.exp(model.network.position_logits(MAX_SLATE_SIZE).numpy().astype(np.float64))
        self._current = (model, features, odds)
        self._catalog_vectors = None
        # Again once it serves: items that know_items (the request thread) added while this ran
        # went into the model before; rows that have theirs are left as they are.
        _install_items(model, features, self._known.values())

    @property
    def model(self) -> LoadedModel:
        return self._current[0]

    def scores(self, asks: Sequence[Ask]) -> list[np.ndarray]:
        """Each ask's candidate scores (position bias left out): Q(s, c), or with SlateQ the
        value of each item shown alone."""
        return [s.score for s in self.evaluate(asks)]

    def evaluate(self, asks: Sequence[Ask]) -> list[Scored]:
        """Score every ask's candidates with one encoder pass."""
        model, features, odds = self._current  # one read: a swap mid-batch cannot mix two models
        net = model.network
        with torch.inference_mode():
            user = net.user(*(torch.from_numpy(x) for x in features.states([a.state for a in asks])))
            out: list[Scored] = [Scored(np.empty(0))] * len(asks)
            # Asks that share one candidate list (the catalog) are scored in one product.
            groups: dict[int, list[int]] = {}
            for b, ask in enumerate(asks):
                groups.setdefault(id(ask.candidates), []).append(b)
            for members in groups.values():
                rows, phi = self._item_vectors(model, features, asks[members[0]].candidates)
                some = UserVectors._make(x[members] if x is not None else None for x in user)
                if some.click is None:
                    q = net.q_candidates(some, rows, phi=phi)
                    for row, b in enumerate(members):
                        out[b] = Scored(q[row].numpy())
                    continue
                assert some.no_click is not None  # a click head comes with the value of no click
                q, logits = net.q_and_click_logits(some, rows, phi=phi)
                score = slateq.item_scores(q, logits, some.no_click).numpy()
                v, qbar, none = slateq.attraction(logits).numpy(), q.numpy(), some.no_click.tolist()
                for row, b in enumerate(members):
                    out[b] = Scored(score[row], qbar[row], slateq.ChoiceModel(v[row], odds, none[row]))
        return out

    def _item_vectors(self, model: LoadedModel, features: Featurizer,
                      candidates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates' item rows and phi; the catalog's (one list object, reused by the
        agent until the catalog changes) are computed once per model."""
        cached = self._catalog_vectors
        if cached is not None and cached[0] is model and cached[1] is candidates:
            return cached[2], cached[3]
        rows = torch.from_numpy(features.buckets(candidates)).long()
        phi = model.network.item_vectors(rows)
        if len(candidates) >= CACHE_FROM:
            self._catalog_vectors = (model, candidates, rows, phi)
        return rows, phi

    def rank(self, asks: Sequence[Ask], rng: np.random.Generator, limit: int | None = None) -> list[SlateChoice]:
        version = self.model.headers.version
        shortlisted = []
        for ask, scored in zip(asks, self.evaluate(asks)):
            top = _top_allowed(scored.score, ask.allowed, limit)
            if top is not None:
                ask = _shortlisted(ask, top)
                choice = scored.choice._replace(attraction=scored.choice.attraction[top]) if scored.choice else None
                scored = Scored(scored.score[top], scored.qbar[top] if scored.qbar is not None else None, choice)
            shortlisted.append((ask, scored))
        similarity = self._similarity if self.explorer.diversity > 0 else None
        return _explore(self.explorer, shortlisted, rng, self.name, version, similarity)

    def _similarity(self, ask: Ask) -> exploration.Similarity:
        return category_similarity([self.categories.get(c) for c in ask.candidates])


def _install_items(model: LoadedModel, features: Featurizer, items: Iterable[Item]) -> None:
    """The category and price band of ``items`` into ``model``'s rows that have none."""
    items = list(items)
    if model.config.item_features and items:
        rows = torch.from_numpy(features.buckets([i.item_id for i in items])).long()
        attributes = torch.from_numpy(attribute_rows((i.category, i.price) for i in items))
        model.network.set_item_features(rows, attributes, only_unknown=True)


def _explore(explorer: Explorer, shortlisted: Sequence[tuple[Ask, Scored]], rng: np.random.Generator, policy: str,
             version: int | None, similarity: Callable[[Ask], exploration.Similarity] | None = None) -> list[SlateChoice]:
    """One slate per ask, in the asks' order. Asks with as many candidates and the same slate
    size are filled together (one array operation per position for the whole micro-batch);
    groups are filled in the order of their first ask, so the same seed gives the same slates."""
    groups: dict[tuple[int, int], list[int]] = {}
    for b, (ask, _) in enumerate(shortlisted):
        groups.setdefault((len(ask.candidates), ask.slate_size), []).append(b)
    out: list[SlateChoice] = [None] * len(shortlisted)  # type: ignore[list-item]
    for (_, k), members in groups.items():
        asks, scored = [shortlisted[b][0] for b in members], [shortlisted[b][1] for b in members]
        sims = [similarity(a) for a in asks] if similarity is not None else None
        score = np.stack([s.score for s in scored])
        allowed = None
        if any(a.allowed is not None for a in asks):  # rows without a mask allow everything
            allowed = np.stack([a.allowed if a.allowed is not None else np.ones(len(a.candidates), bool) for a in asks])
        first = scored[0]
        if first.qbar is None or first.choice is None:
            order, probs = explorer.slate(score, k, rng, sims, allowed=allowed)
        else:  # SlateQ: values given a click, and each row's click model
            # One model scored them all, so every row has its click model.
            choices = [s.choice for s in scored if s.choice is not None]
            choice = slateq.ChoiceModel(np.stack([c.attraction for c in choices]), first.choice.position_odds,
                                        np.array([c.no_click_value for c in choices]))
            order, probs = explorer.slate(np.stack([s.qbar for s in scored if s.qbar is not None]), k, rng, sims,
                                          choice, allowed)
        for row, b in enumerate(members):
            out[b] = _choice(asks[row].candidates, score[row], order[row], probs[row], policy, version)
    return out


class Popularity:
    """Reward-weighted interaction counts that halve every ``half_life_s`` of event time, fed
    from user-state updates (each carries the user's newest interactions)."""

    def __init__(self, half_life_s: float = 3600.0, capacity: int = 100_000) -> None:
        self.half_life_s, self.capacity = half_life_s, capacity
        self._score: dict[str, float] = {}
        self._seen_until: dict[str, float] = {}
        self._origin: float | None = None  # event time at which weights are 1

    def _weight(self, event: str, ts: float) -> float:
        """Newer interactions weigh more (rather than decaying all the old ones each time)."""
        if self._origin is None:
            self._origin = ts
        exponent = (ts - self._origin) / self.half_life_s
        if exponent > 64:  # re-base before the floats grow out of range
            scale = 2.0 ** -exponent
            self._score = {k: v * scale for k, v in self._score.items()}
            self._origin, exponent = ts, 0.0
        return EVENT_WEIGHTS.get(event, 1.0) * 2.0 ** exponent

    def observe(self, state: UserState) -> None:
        """Count the interactions of ``state`` newer than the last state seen for its user."""
        since = self._seen_until.get(state.user_id, -math.inf)
        for inter in state.history:
            if inter.ts > since:
                self._score[inter.item_id] = self._score.get(inter.item_id, 0.0) + self._weight(inter.event, inter.ts)
        if state.history:
            self._seen_until[state.user_id] = max(since, state.history[-1].ts)
        if len(self._score) > self.capacity:  # keep the most popular half
            keep = sorted(self._score.items(), key=lambda kv: -kv[1])[: self.capacity // 2]
            self._score = dict(keep)
        if len(self._seen_until) > 10 * self.capacity:
            self._seen_until.clear()  # worst case: a user's old interactions count again once

    def __len__(self) -> int:
        return len(self._score)

    def score(self, items: Sequence[str]) -> np.ndarray:
        return np.array([self._score.get(i, 0.0) for i in items])


class PopularityPolicy:
    """Most popular candidates first, explored like the DQN's scores (log-scaled counts)."""

    name = "popularity"

    def __init__(self, popularity: Popularity, explorer: Explorer = Explorer()) -> None:
        self.popularity, self.explorer = popularity, explorer

    def rank(self, asks: Sequence[Ask], rng: np.random.Generator, limit: int | None = None) -> list[SlateChoice]:
        shortlisted = []
        for ask in asks:
            raw = self.popularity.score(ask.candidates)
            top = _top_allowed(raw, ask.allowed, limit)
            ask, raw = _shortlisted(ask, top), raw if top is None else raw[top]
            scores = np.log1p(raw / max(raw.max(), 1e-12)) if raw.max() > 0 else raw
            shortlisted.append((ask, Scored(scores)))
        return _explore(self.explorer, shortlisted, rng, self.name, None)


class RandomPolicy:
    name = "random"

    def rank(self, asks: Sequence[Ask], rng: np.random.Generator, limit: int | None = None) -> list[SlateChoice]:
        out = []
        for ask in asks:
            n = len(ask.candidates) if ask.allowed is None else int(ask.allowed.sum())
            if limit is not None and n > limit:
                picked = np.sort(rng.choice(n, limit, replace=False))
                ask = _shortlisted(ask, picked if ask.allowed is None else np.flatnonzero(ask.allowed)[picked])
            scores = np.zeros(len(ask.candidates))
            order, _probs = exploration.uniform(scores, ask.slate_size, rng=rng, allowed=ask.allowed)
            # A uniform subset, then a uniform order: each position is uniform over the items
            # of all n allowed candidates not placed above it.
            probs = np.array([1.0 / (n - j) for j in range(len(order))])
            out.append(_choice(ask.candidates, scores, order, probs, self.name, None))
        return out
