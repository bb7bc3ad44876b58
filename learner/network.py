"""The Q-network: Q(s, a) for a user state s and a candidate item a.

    user side   history (item + event embeddings) -> GRU | LSTM | 1-D CNN -> h, plus context
    item side   phi(a) = hashed id embedding (+ projected title embedding when content is on)
    dueling     Q(s, a) = V(s) + A(s, a) - mean over the candidate set C of A(s, c),
                A(s, a) = u(s) . phi(a)

The advantage is a dot product, so scoring 1,000 candidates is one matrix product, and the mean
over C needs only the mean of the candidates' vectors. In training a learned per-position
offset absorbs position bias (``q_logged``); ranking (``q_candidates``) leaves it out.

Item ids hash into ``hash_buckets`` rows, initialised at zero: an id never trained on (cold
start) is scored from its content alone, or as an average item without content.
"""

from __future__ import annotations

import torch
from torch import nn

from contracts.events import MAX_SLATE_SIZE
from learner.config import LearnerConfig
from learner.features import EVENT_KINDS


class QNetwork(nn.Module):
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
        self.content_dim = config.content_dim
        if config.content_dim:
            self.content_proj = nn.Linear(config.content_dim, d, bias=False)
            # Title vectors by item row: filled by the caller (learner or agent) from `items`;
            # not part of the published weights, every reader embeds titles itself.
            self.register_buffer("content", torch.zeros(config.hash_buckets, config.content_dim), persistent=False)
        self.item_out = nn.Linear(d, h)
        self.value = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        self.advantage = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        self.position = nn.Embedding(MAX_SLATE_SIZE, 1) if config.position_bias else None
        if self.position is not None:
            nn.init.zeros_(self.position.weight)

    # -- pieces ------------------------------------------------------------------------------

    def _embed(self, rows: torch.Tensor) -> torch.Tensor:
        """Item rows of any shape [...] -> [..., embedding_dim] (id row plus title vector)."""
        e = self.item_ids(rows)
        if self.content_dim:
            e = e + self.content_proj(self.content[rows])
        return e

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """phi(a) for item rows of any shape [...] -> [..., hidden]."""
        return self.item_out(self._embed(rows))

    def user(self, items: torch.Tensor, events: torch.Tensor, context: torch.Tensor,
             context_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V(s) [B], u(s) [B, hidden]) from left-padded histories [B, L] and context rows."""
        return self._encode(self._embed(items), items, events, context, context_weights)

    def _encode(self, embedded: torch.Tensor, items: torch.Tensor, events: torch.Tensor, context: torch.Tensor,
                context_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq = embedded + self.events(events)
        if self.encoder_kind == "cnn":
            conv = torch.relu(self.encoder(seq.transpose(1, 2)))  # [B, h, L]
            pad = (items == 0).unsqueeze(1)
            h = conv.masked_fill(pad, 0.0).amax(dim=2)  # max over real positions (0 if none)
        else:
            out, _ = self.encoder(seq)
            h = out[:, -1]  # left padding: the last step has read the newest interaction
        h = torch.relu(h + self.context(context, per_sample_weights=context_weights))
        return self.value(h).squeeze(-1), self.advantage(h)

    # -- Q values ----------------------------------------------------------------------------

    def q_candidates(self, user: tuple[torch.Tensor, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
        """Q(s, c) for every state in the batch and every candidate row: [B] x [K] -> [B, K]."""
        v, u = user
        adv = u @ self.item_vectors(candidates).T
        return v.unsqueeze(1) + adv - adv.mean(dim=1, keepdim=True)

    def q_logged(self, items: torch.Tensor, events: torch.Tensor, context: torch.Tensor,
                 context_weights: torch.Tensor, actions: torch.Tensor, positions: torch.Tensor,
                 candidates: torch.Tensor) -> torch.Tensor:
        """Q(s, a) of the logged actions [B] at their positions, against the baseline of C.

        One lookup in the item table serves the history, the actions and the candidates: each
        lookup's backward pass fills a dense gradient of the whole table, the biggest cost of a
        CPU step after the encoder."""
        B, L = items.shape
        embedded = self._embed(torch.cat([items.reshape(-1), actions, candidates]))
        history, acted, cands = embedded.split([B * L, B, len(candidates)])
        v, u = self._encode(history.view(B, L, -1), items, events, context, context_weights)
        q = v + (u * self.item_out(acted)).sum(-1) - u @ self.item_out(cands).mean(0)
        if self.position is not None:
            q = q + self.position(positions).squeeze(-1)
        return q

    @torch.no_grad()
    def set_content(self, buckets: torch.Tensor, vectors: torch.Tensor) -> None:
        """Install title vectors for item rows (no-op when content is off)."""
        if self.content_dim:
            self.content[buckets.to(self.content.device)] = vectors.to(self.content.device, self.content.dtype)
