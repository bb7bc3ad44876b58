"""The Q-network: Q(s, a) for a user state s and a candidate item a.

    user side   history (item + event embeddings) -> GRU | LSTM | 1-D CNN -> h, plus context
    item side   phi(a) = hashed id embedding + category and price-band embeddings (item features,
                from ``items``) (+ projected title embedding when content is on)
    value       Q(s, a) = V(s) + A(s, a),  A(s, a) = u(s) . phi(a)

The advantage is a dot product, so scoring 1,000 candidates is one matrix product. There is no
dueling baseline (the mean advantage over a candidate set): training's candidate set (a sample
of the catalog) and serving's (the request's, often the whole catalog) differ, so the baseline
shifted Q between the two, and SlateQ's slates depend on Q's level against the no-click value;
without it the long-term learner earned more in ``shelfq bench policy``. In training a learned
per-position offset absorbs position bias (``logged``); ranking (``q_candidates``) leaves it out.

With ``objective="slateq"`` (``learner.slateq``) Q is the value of an item *given that it is
clicked*, and a click head on the same user state gives the click logit of every item:

    click       logit(s, a) = b(s) + w(s) . phi(a)   (+ the position offset, in training)
    no click    Q(s, none): the value of a slate's no-click option

Item ids hash into ``hash_buckets`` rows, initialised at zero: an id never trained on (cold
start) is scored from its category, price band and content, as an item of its kind; without
any of these, as an average item. The table of each item row's category and price band
(``learner.item_features``) travels with the model's weights, so an agent scores with what the
learner knew; an agent fills in rows of items that arrived since (``set_item_features``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from shelfq.contracts.events import MAX_SLATE_SIZE
from shelfq.learner.config import LearnerConfig
from shelfq.learner.affinity import FEATURES as AFFINITY_FEATURES
from shelfq.learner.affinity import NEXT_FEATURES
from shelfq.learner.affinity import affinity
from shelfq.learner.features import EVENT_KINDS
from shelfq.learner.item_features import CATEGORY_BUCKETS, COLUMNS, PRICE_BANDS


class UserVectors(NamedTuple):
    """The user side of a state: V(s) [B], u(s) [B, hidden], and with SlateQ the click head's
    bias and weights as one [B, 1 + hidden] tensor and the value of not clicking [B] (None
    otherwise)."""

    value: torch.Tensor
    advantage: torch.Tensor
    click: torch.Tensor | None = None
    no_click: torch.Tensor | None = None
    history: torch.Tensor | None = None
    """The state's history as item rows [B, L] (for the cross features), when the network has them."""
    history_events: torch.Tensor | None = None


class Logged(NamedTuple):
    """What training reads for the logged actions [B]: Q(s, a), and with SlateQ the
    log-probabilities that the action was clicked and that it was not, and the value of the
    state's no-click option (None otherwise)."""

    q: torch.Tensor
    log_click: torch.Tensor | None = None
    log_no_click: torch.Tensor | None = None
    no_click: torch.Tensor | None = None


class QNetwork(nn.Module):
    # Buffers (register_buffer), declared so that they read as tensors, not as whatever
    # nn.Module.__getattr__ may return; each exists only with its feature on (see __init__).
    item_attributes: torch.Tensor
    next_click_rows: torch.Tensor
    next_click_counts: torch.Tensor
    content: torch.Tensor

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__()
        d, h = config.embedding_dim, config.hidden_dim
        self.encoder_kind = config.encoder
        self.item_ids = nn.Embedding(config.hash_buckets, d, padding_idx=0)
        nn.init.zeros_(self.item_ids.weight)
        self.events = nn.Embedding(EVENT_KINDS, d, padding_idx=0)
        self.context = nn.EmbeddingBag(config.context_buckets, h, mode="sum", padding_idx=0)
        nn.init.normal_(self.context.weight, std=0.01)
        if config.encoder == "gru":
            self.encoder: nn.Module = nn.GRU(d, h, batch_first=True)
        elif config.encoder == "lstm":
            self.encoder = nn.LSTM(d, h, batch_first=True)
        else:
            self.encoder = nn.Conv1d(d, h, kernel_size=3, padding=1)
        self.item_features = config.item_features
        if config.item_features:
            self.categories = nn.Embedding(CATEGORY_BUCKETS, d, padding_idx=0)
            self.price_bands = nn.Embedding(PRICE_BANDS, d, padding_idx=0)
            # At zero, like the id rows: an untrained feature adds nothing, not noise.
            nn.init.zeros_(self.categories.weight)
            nn.init.zeros_(self.price_bands.weight)
            # Each item row's (category row, price band); 0 = unknown. Part of the weights.
            self.register_buffer("item_attributes", torch.zeros(config.hash_buckets, COLUMNS, dtype=torch.long))
        # Cross features of each candidate with the user's history (learner.affinity): a click
        # term and a value term, from zero.
        self.next_clicks = config.next_clicks if config.affinity else 0
        features = AFFINITY_FEATURES + (NEXT_FEATURES if self.next_clicks else 0)
        self.affinity = nn.Linear(features, 2, bias=False) if config.affinity else None
        if self.affinity is not None:
            nn.init.zeros_(self.affinity.weight)
        # The chain's add-one log estimate (learner.affinity.markov_log_prior) as a fixed term
        # of the click logit, beside the two learnt weights of its counts.
        self.next_click_prior = bool(self.next_clicks) and config.next_click_prior
        if self.next_clicks:
            # What was clicked right after each item row, counted by the learner
            # (learner.next_clicks): part of the weights, so agents read the same table.
            self.register_buffer("next_click_rows", torch.zeros(config.hash_buckets, self.next_clicks, dtype=torch.int32))
            self.register_buffer("next_click_counts", torch.zeros(config.hash_buckets, self.next_clicks))
        self.content_dim = config.content_dim
        if config.content_dim:
            self.content_proj = nn.Linear(config.content_dim, d, bias=False)
            # Title vectors by item row: filled by the caller (learner or agent) from `items`;
            # not part of the published weights, every reader embeds titles itself.
            self.register_buffer("content", torch.zeros(config.hash_buckets, config.content_dim), persistent=False)
        self.item_out = nn.Linear(d, h)
        self.value = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        self.advantage = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        self.slateq = config.objective == "slateq"
        # The click head reads the same user state and item vectors: which items get clicked
        # and what a click is worth are two questions about the same shopper and items.
        self.click = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1 + h)) if self.slateq else None
        # The value of the slate's no-click option: the session may go on without a click.
        self.no_click = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1)) if self.slateq else None
        self.position = nn.Embedding(MAX_SLATE_SIZE, 1) if config.position_bias else None
        if self.position is not None:
            nn.init.zeros_(self.position.weight)

    # -- pieces ------------------------------------------------------------------------------

    def _embed(self, rows: torch.Tensor) -> torch.Tensor:
        """Item rows of any shape [...] -> [..., embedding_dim] (id row, item features, title vector)."""
        e = self.item_ids(rows)
        if self.item_features:
            attributes = self.item_attributes[rows]
            e = e + self.categories(attributes[..., 0]) + self.price_bands(attributes[..., 1])
        if self.content_dim:
            e = e + self.content_proj(self.content[rows])
        return e

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """phi(a) for item rows of any shape [...] -> [..., hidden]."""
        return self.item_out(self._embed(rows))

    def _phi(self, candidates: torch.Tensor | None, phi: torch.Tensor | None) -> torch.Tensor:
        """The candidates' item vectors: ``phi`` when the caller has them, else computed."""
        if phi is not None:
            return phi
        if candidates is None:
            raise ValueError("pass the candidates' item rows or their item vectors (phi)")
        return self.item_vectors(candidates)

    def user(self, items: torch.Tensor, events: torch.Tensor, context: torch.Tensor,
             context_weights: torch.Tensor) -> UserVectors:
        """The user vectors of left-padded histories [B, L] and context rows."""
        return self._encode(self._embed(items), items, events, context, context_weights)

    def _encode(self, embedded: torch.Tensor, items: torch.Tensor, events: torch.Tensor, context: torch.Tensor,
                context_weights: torch.Tensor) -> UserVectors:
        seq = embedded + self.events(events)
        if self.encoder_kind == "cnn":
            conv = torch.relu(self.encoder(seq.transpose(1, 2)))  # [B, h, L]
            pad = (items == 0).unsqueeze(1)
            h = conv.masked_fill(pad, 0.0).amax(dim=2)  # max over real positions (0 if none)
        else:
            out, _ = self.encoder(seq)
            h = out[:, -1]  # left padding: the last step has read the newest interaction
        h = torch.relu(h + self.context(context, per_sample_weights=context_weights))
        history = (items, events) if self.affinity is not None else (None, None)
        if self.click is None or self.no_click is None:
            return UserVectors(self.value(h).squeeze(-1), self.advantage(h), None, None, *history)
        return UserVectors(self.value(h).squeeze(-1), self.advantage(h), self.click(h), self.no_click(h).squeeze(-1),
                           *history)

    def _cross(self, user: UserVectors, rows: torch.Tensor | None) -> torch.Tensor | None:
        """The (click, value) terms [B, K, 2] of candidate rows [K] or [B, K] from the cross
        features with the user's history; None when the network has none."""
        if self.affinity is None or user.history is None or user.history_events is None:
            return None
        if rows is None:
            raise ValueError("this network reads cross features: pass the candidates' item rows with their vectors")
        attributes = self.item_attributes if self.item_features else None
        table = (self.next_click_rows, self.next_click_counts) if self.next_clicks else None
        features = affinity(user.history, user.history_events, rows, attributes, table, prior=self.next_click_prior)
        if not self.next_click_prior:
            return self.affinity(features)
        terms = self.affinity(features[..., :-1])
        return terms + torch.stack([features[..., -1], torch.zeros_like(features[..., -1])], dim=-1)

    def set_next_clicks(self, rows: torch.Tensor, successors: torch.Tensor, counts: torch.Tensor) -> None:
        """Write the next-clicks table's ``rows`` (``learner.next_clicks``)."""
        self.next_click_rows[rows] = successors.to(self.next_click_rows.device)
        self.next_click_counts[rows] = counts.to(self.next_click_counts.device)

    # -- Q values ----------------------------------------------------------------------------

    def q_candidates(self, user: UserVectors, candidates: torch.Tensor | None = None, *,
                     phi: torch.Tensor | None = None) -> torch.Tensor:
        """Q(s, c) for every state in the batch and every candidate: [B] x [K] -> [B, K]; the
        candidates as item rows, or as their item vectors ``phi`` when the caller has them."""
        phi = self._phi(candidates, phi)
        q = user.value.unsqueeze(1) + user.advantage @ phi.T
        cross = self._cross(user, candidates)
        return q if cross is None else q + cross[..., 1]

    def q_and_click_logits(self, user: UserVectors, candidates: torch.Tensor, *,
                           phi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``q_candidates`` and ``click_logits`` of a SlateQ network together, the cross features
        computed once (they cost [B, L, K]: the agent's and the target's hot path)."""
        if user.click is None:
            raise ValueError("this network has no click head (objective is not slateq)")
        phi = self.item_vectors(candidates) if phi is None else phi
        q = user.value.unsqueeze(1) + user.advantage @ phi.T
        logits = user.click[:, :1] + user.click[:, 1:] @ phi.T
        cross = self._cross(user, candidates)
        return (q, logits) if cross is None else (q + cross[..., 1], logits + cross[..., 0])

    def click_logits(self, user: UserVectors, candidates: torch.Tensor | None = None, *,
                     phi: torch.Tensor | None = None) -> torch.Tensor:
        """SlateQ's click logits of every candidate, position left out: [B] x [K] -> [B, K]."""
        if user.click is None:
            raise ValueError("this network has no click head (objective is not slateq)")
        phi = self._phi(candidates, phi)
        logits = user.click[:, :1] + user.click[:, 1:] @ phi.T
        cross = self._cross(user, candidates)
        return logits if cross is None else logits + cross[..., 0]

    def logged(self, items: torch.Tensor, events: torch.Tensor, context: torch.Tensor,
               context_weights: torch.Tensor, actions: torch.Tensor, positions: torch.Tensor,
               slates: torch.Tensor | None = None) -> Logged:
        """Q(s, a) of the logged actions [B] and, with SlateQ and the
        slates' item rows [B, W], the log-probabilities that each action was and was not
        clicked under the choice model (``learner.slateq``).

        The position offset joins whichever of the two the position explains: the reward of
        an item-wise Q, the clicks of SlateQ (a click's value does not depend on where the item
        was shown). One lookup in the item table serves the history, the actions and the
        slates: each lookup's backward pass fills a dense gradient of the whole
        table, the biggest cost of a CPU step after the encoder."""
        B, L = items.shape
        W = 0 if slates is None or not self.slateq else slates.shape[1]
        rows = [items.reshape(-1), actions] + ([slates.reshape(-1)] if slates is not None and W else [])
        embedded = self._embed(torch.cat(rows))
        history, acted, shown = embedded.split([B * L, B, B * W])
        user = self._encode(history.view(B, L, -1), items, events, context, context_weights)
        phi = self.item_out(acted)
        q = user.value + (user.advantage * phi).sum(-1)
        cross = self._cross(user, actions.unsqueeze(1))
        if cross is not None:
            q = q + cross[:, 0, 1]
        if user.click is None:
            return Logged(q + self._offsets(positions))
        if not W:
            raise ValueError("SlateQ needs the slates' item rows to train its click model")
        # Logits of the action and of every shown item at its own position; padding drops out.
        logit = user.click[:, 0] + (user.click[:, 1:] * phi).sum(-1) + self._offsets(positions)
        slots = torch.arange(W, device=items.device)
        shown_logits = (user.click[:, :1] + (user.click[:, 1:].unsqueeze(1) * self.item_out(shown).view(B, W, -1)).sum(-1)
                        + self._offsets(slots))
        if cross is not None:
            logit = logit + cross[:, 0, 0]
            shown_cross = self._cross(user, slates)
            assert shown_cross is not None  # the same user and network as the action's cross terms
            shown_logits = shown_logits + shown_cross[..., 0]
        others = shown_logits.masked_fill((slates == 0) | (slots == positions.unsqueeze(1)), -torch.inf)
        # The no-click option (logit 0) and the other shown items compete with the action.
        log_rest = torch.logsumexp(torch.cat([torch.zeros_like(logit).unsqueeze(1), others], 1), dim=1)
        log_all = torch.logaddexp(log_rest, logit)
        return Logged(q, logit - log_all, log_rest - log_all, user.no_click)

    def _offsets(self, positions: torch.Tensor) -> torch.Tensor | float:
        return self.position(positions).squeeze(-1) if self.position is not None else 0.0

    def position_logits(self, k: int) -> torch.Tensor:
        """The learned offsets of positions 0..k-1 (zeros without position bias): with SlateQ,
        what each position adds to an item's click logit."""
        if self.position is None:
            return torch.zeros(k)
        return self.position.weight[:k, 0].detach()

    @torch.no_grad()
    def set_item_features(self, buckets: torch.Tensor, attributes: torch.Tensor, only_unknown: bool = False) -> None:
        """Install item rows' (category row, price band) [n, 2] (no-op without item features);
        ``only_unknown`` leaves rows that already have some, as an agent does with a model's."""
        if not self.item_features:
            return
        buckets = buckets.to(self.item_attributes.device)
        attributes = attributes.to(self.item_attributes.device, torch.long)
        if only_unknown:
            unknown = (self.item_attributes[buckets] == 0).all(dim=1)
            buckets, attributes = buckets[unknown], attributes[unknown]
        self.item_attributes[buckets] = attributes

    @torch.no_grad()
    def set_content(self, buckets: torch.Tensor, vectors: torch.Tensor) -> None:
        """Install title vectors for item rows (no-op when content is off)."""
        if self.content_dim:
            self.content[buckets.to(self.content.device)] = vectors.to(self.content.device, self.content.dtype)
