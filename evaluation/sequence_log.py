"""A synthetic shop log of sequential behaviour, for ``shelfq bench replay`` and its tests.

Deterministic (one seed, Python's own ``random``): the same arguments write the same bytes.
The shop has categories whose items form a chain (a series, a course, the next size up): a
shopper mostly goes on to the next item of the chain they are in, sometimes to another item of
the same category, sometimes to one of the shop's best sellers, and a returning shopper often
picks up where their last session left off. So what a user did last says a lot about what
they do next (a first-order Markov chain predicts it well), and overall popularity says little.

The log is JSONL in the ``shelfq replay`` format (docs/replay.md): the catalog (``item`` lines
with category, price and title), then per interaction an impression of the item alone and a
click on it, and an exit at the end of each session; sessions are more than an hour apart.

>>> lines = generate(users=3, seed=1)
>>> lines == generate(users=3, seed=1), lines[0]
(True, '{"schema":"shelfq.item.v1","item_id":"c00-i00","ts":1767225600.0,"title":"category 0 item 0","category":"c00","price":12.0}')
>>> from shelfq.frontend.replay import parse_jsonl
>>> parsed = parse_jsonl("\\n".join(lines).encode())
>>> parsed.bad, sum(1 for e in parsed.events if getattr(e, "event", None) == "click") > 3 * 3
([], True)
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from shelfq.contracts.events import Feedback, Impression, Item, encode

START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SPAN_S = 14 * 86_400.0


def generate(users: int = 300, categories: int = 20, chain: int = 15, seed: int = 0, follow: float = 0.6,
             same_category: float = 0.2) -> list[str]:
    """The log's lines. ``follow``: the chance that the next item is the chain's next one;
    ``same_category``: another item of the category; the rest goes to the best sellers."""
    if users < 1 or categories < 1 or chain < 2:
        raise ValueError("generate: users and categories must be >= 1 and chains at least 2 items long")
    if not (0 <= follow and 0 <= same_category and follow + same_category <= 1):
        raise ValueError(f"generate: follow and same_category are chances that add up to at most 1, got {follow}, {same_category}")
    rng = random.Random(seed)
    cats = [f"c{c:02d}" for c in range(categories)]
    items = [[f"{cat}-i{i:02d}" for i in range(chain)] for cat in cats]
    lines = [encode(Item(item_id=items[c][i], title=f"category {c} item {i}", category=cats[c],
                         price=round(12.0 + 7.0 * (c % 5) + 0.5 * i, 2), ts=START_TS)).decode()
             for c in range(categories) for i in range(chain)]
    flat = [item for row in items for item in row]
    best_sellers = rng.sample(flat, min(len(flat), 12))
    weights = [1.0 / (rank + 1) for rank in range(len(best_sellers))]  # Zipf-like
    request = 0
    for u in range(users):
        user = f"u{u:04d}"
        favourites = rng.sample(range(categories), min(categories, rng.choice((1, 1, 2, 3))))
        place: tuple[int, int] | None = None  # (category, position) where the user left off
        clock = START_TS + rng.random() * SPAN_S * 0.8
        for s in range(1 + min(3, _poisson(rng, 1.3))):
            if place is None or rng.random() < 0.5:  # a fresh start in a favourite (or any) category
                c = rng.choice(favourites) if rng.random() < 0.8 else rng.randrange(categories)
                place = (c, min(chain - 2, int(rng.expovariate(0.4))))
            # else the user picks up where they left off: the item the last session led to
            session = f"{user}-{s}"
            last_request = ""
            for _ in range(rng.randint(3, 8)):
                c, i = place
                item = items[c][i]
                request += 1
                last_request = f"r{request:06d}"
                lines.append(encode(Impression(request_id=last_request, user_id=user, session_id=session, ts=clock,
                                               items=[item])).decode())
                lines.append(encode(Feedback(request_id=last_request, user_id=user, session_id=session, ts=clock + 2.0,
                                             event="click", item_id=item)).decode())
                clock += rng.uniform(30.0, 300.0)
                draw = rng.random()
                if draw < follow:
                    place = (c, i + 1) if i + 1 < chain else (rng.choice(favourites), 0)
                elif draw < follow + same_category:
                    place = (c, rng.randrange(chain))
                else:
                    pick = rng.choices(best_sellers, weights)[0]
                    place = (flat.index(pick) // chain, flat.index(pick) % chain)
            lines.append(encode(Feedback(request_id=last_request, user_id=user, session_id=session, ts=clock,
                                         event="exit")).decode())
            clock += rng.uniform(3_600.0, 3 * 86_400.0)
    return lines


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw by counting exponential gaps (mean is small)."""
    n, total = 0, rng.expovariate(1.0)
    while total < mean:
        n += 1
        total += rng.expovariate(1.0)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shelfq.evaluation.sequence_log", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="where to write the JSONL log")
    parser.add_argument("--users", type=int, default=300, help="shoppers (default 300: about 4,000 clicks)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    lines = generate(users=args.users, seed=args.seed)
    args.path.write_text("\n".join(lines) + "\n")
    clicks = sum('"event":"click"' in line for line in lines)
    print(f"wrote {args.path}: {len(lines)} lines, {clicks} clicks of {args.users} users", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
