"""SlateQ (Ie et al., IJCAI 2019): the value of a whole slate, from the value of a click and a
choice model, so that items that draw clicks away from better ones are left out.

A shopper clicks at most one item of a slate, or none. Under a multinomial logit choice model
item i of slate A is clicked with probability v_i / (1 + sum_{j in A} v_j), where v_i is the
item's attraction and 1 stands for not clicking. The long-term value of showing A in state s is

    Q(s, A) = (Qbar(s, none) + sum_{i in A} v_i * Qbar(s, i)) / (1 + sum_{j in A} v_j)

where Qbar(s, i) is the value of i *given that it is clicked*: its reward plus the discounted
value of the next slate, learned by TD from clicked transitions only, and Qbar(s, none) is the
value of not clicking (the session may go on), learned from impressions without feedback. An item-wise Q(s, a)
averages clicks and no-clicks instead, so an item that is clicked often but leads nowhere
(bait) outranks one that is clicked less but is worth more, whatever the discount.

The attractions come from the network's click head, v = exp(logit), trained by the likelihood
of each shown item's click or no click under this model, with the other items of its own slate
as competitors: so v is the item's attraction against the no-click option, not its click odds
(an item beside strong competitors is clicked less than its attraction says). Slates are built
greedily, one position at a time, with the item that makes the slate so far worth the most
(``assortment_gains``); the agent does this with exploration, and the TD target values the next
slate as the greedy one (``slate_value``). Ranking by v * Qbar alone (SlateQ's top-k heuristic)
would still pick bait: its high attraction outweighs its low value. Leaving out the no-click
value would too, with gamma > 0: it makes any click look better than none.

>>> import torch
>>> qbar = torch.tensor([[1.0, 10.0, 2.0]])
>>> logits = torch.log(torch.tensor([[4.0, 0.25, 1.0]]))    # attractions 4, 0.25 and 1
>>> [round(x, 3) for x in item_scores(qbar, logits)[0].tolist()]   # each item alone
[0.8, 2.0, 1.0]
>>> [round(x, 3) for x in item_scores(qbar, logits, torch.tensor([1.0]))[0].tolist()]
[1.0, 2.8, 1.5]
>>> round(float(slate_value(qbar, logits, 2)[0]), 3)        # items 1 and 2: (2.5 + 2) / 2.25
2.0
>>> round(float(slate_value(qbar, logits, 3)[0]), 3)        # a full slate must take the bait too
1.36
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import numpy as np
import torch

MAX_LOGIT = 20.0  # exp(20) ~ 5e8: attractions stay finite even from an untrained head


def attraction(logits: torch.Tensor) -> torch.Tensor:
    """The choice model's weight of each item: the odds of its click."""
    return logits.clamp(max=MAX_LOGIT).exp()


def item_scores(qbar: torch.Tensor, logits: torch.Tensor, no_click: torch.Tensor | None = None) -> torch.Tensor:
    """The value of each item shown on its own, (Qbar(none) + v Qbar) / (1 + v): what ranks a
    shortlist and what slates log as scores. [B, K] (and [B]) -> [B, K]."""
    v = attraction(logits)
    base = 0.0 if no_click is None else no_click.unsqueeze(1)
    return (base + v * qbar) / (1.0 + v)


def slate_value(qbar: torch.Tensor, logits: torch.Tensor, k: int, position_logits: torch.Tensor | None = None,
                no_click: torch.Tensor | None = None) -> torch.Tensor:
    """The value of each row's greedy slate of k from its candidates, [B, K] (and [B]) -> [B];
    position j adds ``position_logits[j]`` to the click logit of the item placed there."""
    num = torch.zeros_like(qbar[:, 0]) if no_click is None else no_click.clone()
    den = torch.ones_like(num)
    placed = torch.zeros_like(qbar, dtype=torch.bool)
    for j in range(min(k, qbar.shape[1])):
        v = attraction(logits if position_logits is None else logits + position_logits[j])
        gains = assortment_gains(qbar, v, num.unsqueeze(1), den.unsqueeze(1)).masked_fill(placed, -torch.inf)
        best = gains.argmax(dim=1, keepdim=True)
        placed.scatter_(1, best, True)
        num = num + (v * qbar).gather(1, best).squeeze(1)
        den = den + v.gather(1, best).squeeze(1)
    return num / den


class ChoiceModel(NamedTuple):
    """The click model of one request's candidates, as the agent builds a slate with it."""

    attraction: np.ndarray
    """v of each candidate at no position offset (the odds of its click, against no click)."""
    position_odds: np.ndarray
    """exp(offset) of each slate position: what being shown there multiplies v by."""
    no_click_value: float | np.ndarray = 0.0
    """Qbar(s, none): what the session is worth if nothing is clicked (one per row of a batch's)."""

    def at(self, position: int) -> np.ndarray:
        """Each candidate's attraction when shown at ``position`` (the last known position's
        odds beyond those learned)."""
        return self.attraction * self.odds_at(position)

    def odds_at(self, position: int) -> float:
        """What being shown at ``position`` multiplies the attraction by."""
        return self.position_odds[min(position, len(self.position_odds) - 1)]


Values = TypeVar("Values", np.ndarray, torch.Tensor)


def assortment_gains(qbar: Values, v: Values, num: float | Values, den: float | Values) -> Values:
    """The value of the slate so far (``num / den``: Qbar(none) + the sum of v * Qbar, and 1 +
    the sum of v, over the items placed) if each candidate were added next.

    >>> assortment_gains(np.array([1.0, 10.0, 2.0]), np.array([4.0, 0.25, 1.0]), 0.0, 1.0).round(3).tolist()
    [0.8, 2.0, 1.0]
    >>> gains = assortment_gains(np.array([1.0, 10.0, 2.0]), np.array([4.0, 0.25, 1.0]), 2.5, 1.25)
    >>> gains[[0, 2]].round(3).tolist()       # with item 1 placed: bait lowers the slate's value
    [1.238, 2.0]
    """
    return (num + v * qbar) / (den + v)
