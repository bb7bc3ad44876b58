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
    cands = candidates.expand(B, -1) if candidates.dim() == 1 else candidates
    kinds = torch.nn.functional.one_hot(events, EVENT_KINDS)[..., 1:].to(torch.float32)  # [B, L, 3]
    same_item = (items.unsqueeze(2) == cands.unsqueeze(1)) & (items != 0).unsqueeze(2)  # [B, L, K]
    if attributes is None:
        same_category = torch.zeros_like(same_item)
    else:
        history_category, category = attributes[items, 0], attributes[cands, 0]
        same_category = (history_category.unsqueeze(2) == category.unsqueeze(1)) & (history_category != 0).unsqueeze(2)
    counts = torch.cat([torch.einsum("blk,ble->bke", same_item.to(torch.float32), kinds),
                        torch.einsum("blk,ble->bke", same_category.to(torch.float32), kinds)], dim=2)
    newest = torch.stack([same_item[:, -1], same_category[:, -1]], dim=2).to(torch.float32)  # [B, K, 2]
    parts = [torch.log1p(counts), newest]
    if next_clicks is not None:
        successors, tallies = next_clicks[0][items[:, -1]], next_clicks[1][items[:, -1]]  # [B, S]: after the newest
        match = (cands.unsqueeze(2) == successors.unsqueeze(1)).to(torch.float32)  # [B, K, S]
        after = torch.einsum("bks,bs->bk", match, tallies)  # how often each candidate followed it
        total = tallies.sum(dim=1, keepdim=True)
        parts.append(torch.stack([after / total.clamp(min=1.0), torch.log1p(after)], dim=2))
        if prior:
            parts.append(markov_log_prior(after, total).unsqueeze(2))
    return torch.cat(parts, dim=2)


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
