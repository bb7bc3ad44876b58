"""How a candidate relates to the user's own history: the cross features of a state and an
item (Wide & Deep's crossed columns), which the Q-network turns into a click and a value term.

For each candidate a and the history's interactions, counted by kind (click, add_to_cart,
purchase) and squashed with log1p:

    same item       interactions with a itself (a shopper tires of what was just clicked,
                    or comes back to it)
    same category   interactions with items of a's category (what the shopper is into)

and whether the newest interaction was with a, or with its category. The encoder could learn
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

from learner.features import EVENT_KINDS

FEATURES = 2 * (EVENT_KINDS - 1) + 2


def affinity(items: torch.Tensor, events: torch.Tensor, candidates: torch.Tensor,
             attributes: torch.Tensor | None) -> torch.Tensor:
    """Cross features [B, K, FEATURES] of left-padded histories (item rows and event ids,
    [B, L]) and candidate item rows ([K] shared by the batch, or [B, K]); ``attributes`` maps
    item rows to (category row, price band), or is None (no categories known)."""
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
    return torch.cat([torch.log1p(counts), newest], dim=2)
