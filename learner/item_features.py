"""What the Q-network knows of an item besides its id: its category and its price band, from
the ``items`` topic. Pure numpy; no torch, no Kafka.

An item's vector is its id embedding plus the embeddings of its category and price band
(``learner.network``). The id row learns what is particular to the item; the category and
band rows pool what every item of the same kind teaches, so an item shown a few times, or
never, is scored like its kind rather than like an average item.

Categories hash into ``CATEGORY_BUCKETS`` rows (0: unknown); prices fall into bands of a
factor ``PRICE_STEP`` each (0: unknown), so 2 and 2.1 share a band and 20 and 200 do not.

>>> rows = attribute_rows([("books", 12.0), (None, None), ("books", 200.0)])
>>> rows[:, 0].tolist()[0] == rows[:, 0].tolist()[2] != 0, rows[1].tolist()
(True, [0, 0])
>>> int(price_band(12.0)) < int(price_band(200.0)) < PRICE_BANDS
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from shelfq.learner.features import stable_hash

CATEGORY_BUCKETS = 256
PRICE_BANDS = 32
PRICE_STEP = math.sqrt(2.0)  # a band per factor of 1.41: 31 bands span 1 to ~46,000
COLUMNS = 2  # (category row, price band) per item row


def category_row(category: str | None) -> int:
    """The category's embedding row (1..CATEGORY_BUCKETS-1), 0 when unknown."""
    return 0 if not category else 1 + stable_hash("category:" + category) % (CATEGORY_BUCKETS - 1)


def price_band(price: float | None) -> int:
    """The price's band (1..PRICE_BANDS-1), 0 when unknown; prices below 1 share band 1."""
    if price is None or not math.isfinite(price) or price < 0:
        return 0
    return 1 + min(PRICE_BANDS - 2, int(math.log(max(price, 1.0)) / math.log(PRICE_STEP)))


def attribute_rows(items: Iterable[tuple[str | None, float | None]]) -> np.ndarray:
    """(category, price) pairs as an int64 array [n, COLUMNS] of embedding rows."""
    rows = [(category_row(c), price_band(p)) for c, p in items]
    return np.array(rows, np.int64).reshape(-1, COLUMNS)
