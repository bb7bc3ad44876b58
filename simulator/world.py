"""Shoppers and a catalog whose choices have long-term consequences (pure, seeded numpy).

The catalog has categories, prices, a quality and a click appeal per item. A share of items are
*bait*: high appeal, low quality. Each shopper has latent category interests and a price
sensitivity. Facing a slate, a shopper picks at most one item by a multinomial logit with a
position bias and a no-click option::

    u_j = interest[category_j] + appeal_j - price_sensitivity * log(price_j / median_price)
          - boredom * (clicks on j earlier this session) - position_decay * position_j
    P(click j) = exp(u_j) / (exp(no_click_utility) + sum_k exp(u_k))

A click leads to add_to_cart and purchase with probabilities that rise with quality and fall
with price for price-sensitive shoppers. What makes the problem sequential: every click moves
the session's *satisfaction* by the item's quality (bait lowers it), a purchase raises it, a
slate without a click lowers it a little, and after each slate the session goes on with
probability ``sigmoid(continue_base + continue_slope * satisfaction)``, else the shopper exits.
Interests drift a little between sessions and lean towards clicked categories.

So bait wins clicks now and shortens the session: click-greedy is not optimal over a session
(``tests/unit/test_simulator.py`` shows it with oracle policies).

>>> world = World(WorldConfig(items=50, users=10), seed=1)
>>> session = world.start_session(user=3, seed=7)
>>> outcome = session.respond(list(range(10)))
>>> outcome.clicked is None or 0 <= outcome.clicked < 50
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from shelfq.contracts.errors import ConfigError
from shelfq.contracts.events import Item

ADJECTIVES = ("classic", "compact", "deluxe", "eco", "everyday", "premium", "pro", "smart", "travel", "vintage")
CATEGORIES = ("books", "kitchen", "garden", "toys", "audio", "shoes", "sports", "beauty", "games", "office",
              "tools", "pets", "music", "baby", "lighting", "bags")


@dataclass(frozen=True)
class WorldConfig:
    """The simulated shop. With these defaults a random slate gets a click ~18% of the time and a
    random session lasts ~3.5 slates."""

    items: int = 300
    """Catalog size."""
    catalog_seed: int = 0
    """Seeds the catalog. It stays the same across runs (a shop's catalog); a run's seed draws
    the shoppers and their choices."""
    categories: int = 10
    """Item categories (at most 16 named ones)."""
    users: int = 2000
    """Shoppers in the population; sessions draw one at random."""
    bait_share: float = 0.25
    """Share of items with high click appeal and low quality."""
    bait_appeal: float = 1.5
    """Extra click utility of a bait item."""
    interest_scale: float = 1.0
    """Spread of shoppers' category interests (utility units)."""
    no_click_utility: float = 4.5
    """Utility of clicking nothing; higher means fewer clicks."""
    position_decay: float = 0.15
    """Click utility lost per position down the slate."""
    boredom: float = 1.0
    """Click utility lost per earlier click on the same item in the session."""
    satisfaction_per_click: float = 1.5
    """Satisfaction change of a click: this times (quality - 0.5)."""
    satisfaction_per_purchase: float = 0.2
    """Satisfaction gained by a purchase."""
    satisfaction_no_click: float = -0.1
    """Satisfaction change of a slate that got no click."""
    continue_base: float = 1.2
    """Logit of going on after a slate, at satisfaction 0 (1.2: 77%)."""
    continue_slope: float = 1.0
    """How strongly satisfaction moves the chance of going on."""
    interest_drift: float = 0.05
    """Standard deviation of the drift of interests between sessions."""
    interest_from_click: float = 0.05
    """Interest gained in a clicked category."""
    interest_memory: float = 0.9
    """Share of a shopper's drift (and click-driven interest) kept from one session to the next;
    the rest returns to the shopper's own baseline, so interests stay bounded."""
    max_steps: int = 30
    """Slates after which a session is cut off (truncated, not an exit)."""

    def __post_init__(self) -> None:
        for name in ("items", "users", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"simulator: {name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.categories <= len(CATEGORIES):
            raise ConfigError(f"simulator: categories must be in 1..{len(CATEGORIES)}, got {self.categories}")
        if not 0 <= self.interest_memory < 1:
            raise ConfigError(f"simulator: interest_memory must be in [0, 1), got {self.interest_memory}")
        if not 0 <= self.bait_share <= 1:
            raise ConfigError(f"simulator: bait_share must be in [0, 1], got {self.bait_share}")
        for name in ("position_decay", "boredom", "interest_scale", "interest_drift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"simulator: {name} must be >= 0, got {getattr(self, name)}")


class Catalog(NamedTuple):
    ids: list[str]
    titles: list[str]
    category: np.ndarray  # int, index into CATEGORIES
    price: np.ndarray
    quality: np.ndarray  # in (0, 1)
    appeal: np.ndarray
    bait: np.ndarray  # bool

    def category_name(self, j: int) -> str:
        return CATEGORIES[int(self.category[j])]


class Outcome(NamedTuple):
    """What a shopper did with one slate."""

    clicked: int | None  # catalog index
    position: int | None
    add_to_cart: bool
    purchase: bool
    revenue: float
    exit: bool  # the shopper left after this slate
    truncated: bool  # the session hit max_steps


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_catalog(config: WorldConfig, rng: np.random.Generator) -> Catalog:
    n = config.items
    category = rng.integers(0, config.categories, n)
    price = np.round(np.exp(rng.normal(3.0, 0.6, n)), 2)  # median ~20
    bait = rng.random(n) < config.bait_share
    quality = np.where(bait, rng.beta(2, 8, n), rng.beta(6, 3, n))
    appeal = rng.normal(0.0, 0.5, n) + np.where(bait, config.bait_appeal, 0.0)
    ids = [f"item-{j:05d}" for j in range(n)]
    titles = [f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} {CATEGORIES[c]} item {j}" for j, c in enumerate(category)]
    return Catalog(ids, titles, category, price, quality, appeal, bait)


@dataclass
class Shopper:
    interest: np.ndarray  # per category, utility units
    price_sensitivity: float
    baseline: np.ndarray = field(default_factory=lambda: np.zeros(0))  # where interests return to

    def __post_init__(self) -> None:
        if self.baseline.size == 0:
            self.baseline = self.interest.copy()


@dataclass
class Session:
    """One shopper's visit: respond to slates until the shopper exits."""

    world: World
    user: int
    rng: np.random.Generator
    satisfaction: float = 0.0
    steps: int = 0
    clicks: dict[int, int] = field(default_factory=dict)
    over: bool = False

    def click_probabilities(self, slate: list[int]) -> np.ndarray:
        """P(click) of each slate item under the logit model (the no-click share is the rest)."""
        w, shopper = self.world, self.world.shoppers[self.user]
        c, cfg = w.catalog, w.config
        idx = np.asarray(slate)
        u = (shopper.interest[c.category[idx]] + c.appeal[idx]
             - shopper.price_sensitivity * np.log(c.price[idx] / w.median_price)
             - cfg.boredom * np.array([self.clicks.get(j, 0) for j in slate])
             - cfg.position_decay * np.arange(len(slate)))
        e = np.exp(u - cfg.no_click_utility)
        return e / (1.0 + e.sum())

    def cart_probability(self, j: int) -> float:
        c = self.world.catalog
        return sigmoid(4.0 * (c.quality[j] - 0.5) + 0.5)

    def purchase_probability(self, j: int) -> float:
        w, shopper = self.world, self.world.shoppers[self.user]
        return sigmoid(1.0 + 2.0 * (w.catalog.quality[j] - 0.5)
                       - 2.0 * shopper.price_sensitivity * math.log(w.catalog.price[j] / w.median_price))

    def continue_probability(self) -> float:
        cfg = self.world.config
        return sigmoid(cfg.continue_base + cfg.continue_slope * self.satisfaction)

    def respond(self, slate: list[int]) -> Outcome:
        """The shopper's reaction to ``slate`` (catalog indices, distinct, in position order)."""
        if self.over:
            raise ValueError("this session is over; start a new one")
        if len(set(slate)) != len(slate) or not slate:
            raise ValueError(f"a slate holds distinct items, got {slate}")
        cfg, c = self.world.config, self.world.catalog
        shopper = self.world.shoppers[self.user]
        p = self.click_probabilities(slate)
        pick = self.rng.choice(len(slate) + 1, p=np.append(p, max(0.0, 1.0 - p.sum())))
        clicked = position = None
        cart = purchase = False
        revenue = 0.0
        if pick < len(slate):
            position, clicked = int(pick), int(slate[pick])
            self.clicks[clicked] = self.clicks.get(clicked, 0) + 1
            self.satisfaction += cfg.satisfaction_per_click * (float(c.quality[clicked]) - 0.5)
            shopper.interest[c.category[clicked]] += cfg.interest_from_click
            cart = bool(self.rng.random() < self.cart_probability(clicked))
            if cart and self.rng.random() < self.purchase_probability(clicked):
                purchase, revenue = True, float(c.price[clicked])
                self.satisfaction += cfg.satisfaction_per_purchase
        else:
            self.satisfaction += cfg.satisfaction_no_click
        self.steps += 1
        exit_ = bool(self.rng.random() >= self.continue_probability())
        truncated = not exit_ and self.steps >= cfg.max_steps
        self.over = exit_ or truncated
        return Outcome(clicked, position, cart, purchase, revenue, exit_, truncated)


class World:
    """The catalog (fixed by ``config.catalog_seed``) and a population of shoppers (by ``seed``)."""

    def __init__(self, config: WorldConfig = WorldConfig(), seed: int = 0) -> None:
        self.config, self.seed = config, seed
        self.catalog = make_catalog(config, np.random.default_rng([config.catalog_seed, 0]))
        rng = np.random.default_rng([seed, 1])
        self.median_price = float(np.median(self.catalog.price))
        self.shoppers = [Shopper(rng.normal(0.0, config.interest_scale, config.categories),
                                 float(rng.gamma(2.0, 0.25))) for _ in range(config.users)]
        self._drift_rng = np.random.default_rng([seed, 2])
        self.index = {item_id: j for j, item_id in enumerate(self.catalog.ids)}
        # What the shop's environments share (simulator.env): users' recent interactions, the
        # simulated clock and a session counter.
        self.histories: dict[int, list] = {}
        self.clock = 0.0
        self.sessions_started = 0

    def start_session(self, user: int, seed: int) -> Session:
        """A new visit of ``user``; interests drift a little since the last one (an AR(1)
        around the shopper's baseline: bounded however many sessions a shopper has)."""
        shopper, cfg = self.shoppers[user], self.config
        shopper.interest = (shopper.baseline + cfg.interest_memory * (shopper.interest - shopper.baseline)
                            + self._drift_rng.normal(0.0, cfg.interest_drift, cfg.categories))
        return Session(self, user, np.random.default_rng([self.seed, 3, seed]))

    def user_id(self, user: int) -> str:
        return f"shopper-{user:05d}"

    def user_of(self, user_id: str) -> int:
        """The shopper of a ``user_id`` (the inverse of ``user_id``).

        >>> world = World(WorldConfig(items=5, users=3), seed=0)
        >>> world.user_of(world.user_id(2))
        2
        """
        prefix, _, number = user_id.partition("-")
        if prefix != "shopper" or not number.isdigit() or not 0 <= int(number) < self.config.users:
            raise ValueError(f"not a shopper of this world: {user_id!r}")
        return int(number)

    def catalog_items(self, ts: float) -> list[Item]:
        """The catalog as the ``items`` topic carries it, stamped ``ts``."""
        c = self.catalog
        return [Item(item_id=item_id, ts=ts, title=c.titles[j], category=c.category_name(j), price=float(c.price[j]))
                for j, item_id in enumerate(c.ids)]
