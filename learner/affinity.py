"""How a candidate relates to the user's own history: the cross features of a state and an
item (Wide & Deep's crossed columns), which the Q-network turns into a click and a value term.

For each candidate a and the history's interactions, counted by kind (click, add_to_cart,
purchase) and squashed with log1p:

    same item       interactions with a itself (a shopper tires of what was just clicked,
                    or comes back to it)
    same category   interactions with items of a's category (what the shopper is into)

and whether the newest interaction was with a, or with its category. With a table of what
shoppers clicked next (``learner.next_clicks``), two more: a's share of the clicks that followed
the newest interaction's item, and log1p of their count. The encoder could learn
all of this from item embeddings, but slowly: these counts hand it over from the first step,
so what one shopper's clicks say about their taste reaches their next slate.

>>> import torch
>>> attributes = torch.tensor([[0, 0], [5, 1], [5, 2], [7, 1]])  # rows 1 and 2 share category 5
>>> items, events = torch.tensor([[0, 1, 3]]), torch.tensor([[0, 1, 3]])  # a click on 1, a purchase of 3
>>> f = affinity(items, events, torch.tensor([1, 2, 3]), attributes)
>>> f.shape
torch.Size([1, 3, 8])
>>> (f[0] > 0).int().tolist()   # item clicks, carts, buys | category clicks, carts, buys | newest item, category
[[1, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1, 1, 1]]
"""

from __future__ import annotations

import torch

from shelfq.learner.features import EVENT_KINDS

FEATURES = 2 * (EVENT_KINDS - 1) + 2
NEXT_FEATURES = 2  # with a next-items table: share and log1p count of candidate after the newest item


def affinity(items: torch.Tensor, events: torch.Tensor, candidates: torch.Tensor,
             attributes: torch.Tensor | None,
             next_clicks: tuple[torch.Tensor, torch.Tensor] | None = None, prior: bool = False) -> torch.Tensor:
    """Cross features [B, K, FEATURES (+ NEXT_FEATURES)] of left-padded histories (item rows
    and event ids, [B, L]) and candidate item rows ([K] shared by the batch, or [B, K]);
    ``attributes`` maps item rows to (category row, price band), or is None (no categories
    known); ``next_clicks`` is the (successor rows, counts) table [rows, S] of
    ``learner.next_clicks``, or None. With ``prior`` (and a table) one more column comes last:
    ``markov_log_prior`` of each candidate, for the caller to split off.

    >>> table = (torch.tensor([[0, 0], [2, 3], [0, 0], [0, 0]]), torch.tensor([[0., 0.], [3., 1.], [0., 0.], [0., 0.]]))
    >>> f = affinity(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), torch.tensor([2, 3, 1]), None, table)
    >>> f[0, :, -2:].tolist()  # after item 1: 2 three times in four, 3 once, 1 never
    [[0.75, 1.3862943649291992], [0.25, 0.6931471824645996], [0.0, 0.0]]
    """
    B = items.shape[0]
    kinds = torch.nn.functional.one_hot(events, EVENT_KINDS)[..., 1:].to(torch.float32)  # [B, L, 3]
    if candidates.dim() == 1 and len(candidates):
        # The agent's case: one candidate list (the catalog) for the whole batch. Counted per
        # history entry, not compared with every candidate at every history position ([B, L, K],
        # most of a batch's scoring time); the counts are small integers, so the same floats.
        cands = candidates.expand(B, -1)
        log_counts, newest = _shared_counts(items, kinds, candidates, attributes)
    else:
        cands = candidates.expand(B, -1) if candidates.dim() == 1 else candidates
        same_item = (items.unsqueeze(2) == cands.unsqueeze(1)) & (items != 0).unsqueeze(2)  # [B, L, K]
        if attributes is None:
            same_category = torch.zeros_like(same_item)
        else:
            history_category, category = attributes[items, 0], attributes[cands, 0]
            same_category = (history_category.unsqueeze(2) == category.unsqueeze(1)) & (history_category != 0).unsqueeze(2)
        counts = torch.cat([torch.einsum("blk,ble->bke", same_item.to(torch.float32), kinds),
                            torch.einsum("blk,ble->bke", same_category.to(torch.float32), kinds)], dim=2)
        newest = torch.stack([same_item[:, -1], same_category[:, -1]], dim=2).to(torch.float32)  # [B, K, 2]
        log_counts = torch.log1p(counts)
    parts = [log_counts, newest]
    if next_clicks is not None:
        successors, tallies = next_clicks[0][items[:, -1]], next_clicks[1][items[:, -1]]  # [B, S]: after the newest
        match = (cands.unsqueeze(2) == successors.unsqueeze(1)).to(torch.float32)  # [B, K, S]
        after = torch.einsum("bks,bs->bk", match, tallies)  # how often each candidate followed it
        total = tallies.sum(dim=1, keepdim=True)
        parts.append(torch.stack([after / total.clamp(min=1.0), torch.log1p(after)], dim=2))
        if prior:
            parts.append(markov_log_prior(after, total).unsqueeze(2))
    return torch.cat(parts, dim=2)


def _shared_counts(items: torch.Tensor, kinds: torch.Tensor, candidates: torch.Tensor,
                   attributes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``affinity``'s log1p counts [B, K, 6] (same item, then same category, by kind) and
    newest flags [B, K, 2] for candidate rows [K] shared by the batch.

    >>> items, kinds = torch.tensor([[0, 2, 2]]), torch.eye(3)[[0, 0, 2]].unsqueeze(0)  # a click, a buy of 2
    >>> counts, newest = _shared_counts(items, kinds, torch.tensor([2, 5, 2]), None)
    >>> counts[0, :, :3].expm1().round().tolist(), newest[0, :, 0].tolist()   # both candidates of row 2 count
    ([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]], [1.0, 0.0, 1.0])
    """
    B, K = items.shape[0], len(candidates)
    same_item = _counts_by_key(items, candidates, kinds)
    newest_item = (items[:, -1:] == candidates) & (items[:, -1:] != 0)
    if attributes is None:
        same_category = torch.zeros_like(same_item)
        newest_category = torch.zeros_like(newest_item)
    else:
        history_category, category = attributes[items, 0], attributes[candidates, 0]
        same_category = _counts_by_key(history_category, category, kinds)
        newest_category = (history_category[:, -1:] == category) & (history_category[:, -1:] != 0)
    newest = torch.stack([newest_item.expand(B, K), newest_category.expand(B, K)], dim=2).to(torch.float32)
    return torch.cat([same_item, same_category], dim=2), newest


def _counts_by_key(keys: torch.Tensor, candidate_keys: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """For each row b and candidate k, log1p of the sum of ``kinds[b, l]`` [B, L, E] over the
    history positions l whose key (item or category row, [B, L]; 0 = none) is the candidate's
    [K]: [B, K, E]. One entry per distinct candidate key is added to, then spread to the
    candidates that share it (log1p too: the same floats as log1p of the spread counts).

    >>> _counts_by_key(torch.tensor([[0, 3, 3, 1]]), torch.tensor([3, 0, 4]), torch.ones(1, 4, 1))[0, :, 0].expm1().tolist()
    [2.0, 0.0, 0.0]
    """
    B, E = keys.shape[0], kinds.shape[-1]
    distinct, spread = torch.unique(candidate_keys, return_inverse=True)  # sorted
    at = torch.searchsorted(distinct, keys).clamp(max=len(distinct) - 1)
    hit = (distinct[at] == keys) & (keys != 0)
    slots = (torch.arange(B, device=keys.device).unsqueeze(1) * len(distinct) + at)[hit]
    table = torch.zeros(B * len(distinct), E, dtype=kinds.dtype, device=kinds.device).index_add_(0, slots, kinds[hit])
    return torch.log1p(table).view(B, len(distinct), E).index_select(1, spread)


def markov_log_prior(after: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """log((after + 1) / (total + 1)): the log of the first-order Markov chain's estimate that
    the candidate is clicked next, given how often it followed the newest item (``after``,
    [B, K]) of all the clicks that did (``total``, [B, 1]), add-one smoothed: 0 for an item
    nothing was counted after, and a candidate that never followed an item seen ``total`` times
    starts ``log(total + 1)`` below one that always did.

    As a fixed term of the click logit (weight 1, not learnt: ``LearnerConfig.next_click_prior``)
    it makes the choice model's odds between two candidates start as the chain's, (1 + count) to
    (1 + count), from the first model on, and the network learns what the chain does not know;
    a learnt weight would start at 0 and move about one learning rate per gradient step.

    >>> markov_log_prior(torch.tensor([[3.0, 0.0]]), torch.tensor([[3.0]])).tolist()
    [[0.0, -1.3862943649291992]]
    >>> markov_log_prior(torch.tensor([[0.0]]), torch.tensor([[0.0]])).tolist()   # nothing counted: no prior
    [[0.0]]
    """
    return torch.log1p(after) - torch.log1p(total)
