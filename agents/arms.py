"""Experiment arms: which policy serves which user, by a stable hash of the user id.

An operator names the arms, the policy each serves (its key on ``models``) and its weight:
``SHELFQ_AGENT_ARMS="longterm=dqn-longterm:0.5,myopic=dqn-myopic:0.5"``. Each user lands in one
arm for good: the arm is a function of the user id alone (blake2b, like
``learner.features.stable_hash``, with a personalisation of its own so that the split is
independent of the item hashing), so every replica and every restart agrees, and no state is
kept. The share of users in an arm is its weight over the sum of the weights.

>>> arms = parse_arms("longterm=dqn-longterm:0.5, myopic=dqn-myopic:0.5")
>>> [(a.name, a.policy, a.weight) for a in arms]
[('longterm', 'dqn-longterm', 0.5), ('myopic', 'dqn-myopic', 0.5)]
>>> split = ArmSplit(arms)
>>> split.arm_of("shopper-00042") is split.arm_of("shopper-00042")
True
>>> parse_arms("a=dqn:1,a=dqn-2:1")
Traceback (most recent call last):
...
ValueError: arms: arm 'a' is named twice
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import NamedTuple

#: Longest arm name or policy key (the events' id bound).
MAX_NAME = 256
_PERSON = b"shelfq-arms"  # blake2b personalisation: the split does not correlate with other hashes


class Arm(NamedTuple):
    """One arm: its name (what slates and metrics say), the policy it serves, its weight."""

    name: str
    policy: str
    weight: float = 1.0


def parse_arms(text: str) -> tuple[Arm, ...]:
    """Arms from ``name=policy:weight`` entries separated by commas; the weight may be left
    out (1). An empty text is no experiment: ``()``.

    >>> parse_arms("")
    ()
    >>> parse_arms("a=dqn,b=dqn:3")   # an A/A test may serve one policy in two arms
    (Arm(name='a', policy='dqn', weight=1.0), Arm(name='b', policy='dqn', weight=3.0))
    >>> parse_arms("a=dqn:0")
    Traceback (most recent call last):
    ...
    ValueError: arms: arm 'a' has weight 0.0; a weight is a finite number > 0
    >>> parse_arms("dqn:0.5")
    Traceback (most recent call last):
    ...
    ValueError: arms: 'dqn:0.5' is not name=policy[:weight]
    """
    arms: list[Arm] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, eq, rest = entry.partition("=")
        policy, colon, raw_weight = rest.partition(":")
        name, policy = name.strip(), policy.strip()
        if not eq or not name or not policy:
            raise ValueError(f"arms: {entry!r} is not name=policy[:weight]")
        for what, value in (("name", name), ("policy", policy)):
            if len(value) > MAX_NAME or any(c.isspace() or c in "=:," for c in value):
                raise ValueError(f"arms: {what} {value!r} must be at most {MAX_NAME} characters without spaces, '=', ':' or ','")
        try:
            weight = float(raw_weight) if colon else 1.0
        except ValueError:
            raise ValueError(f"arms: arm {name!r} has weight {raw_weight!r}, not a number") from None
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"arms: arm {name!r} has weight {weight}; a weight is a finite number > 0")
        if any(a.name == name for a in arms):
            raise ValueError(f"arms: arm {name!r} is named twice")
        arms.append(Arm(name, policy, weight))
    if not arms and text.strip():
        raise ValueError(f"arms: {text!r} names no arm")
    return tuple(arms)


def unit_hash(user_id: str) -> float:
    """Where ``user_id`` falls in [0, 1): the same in every process, every run.

    >>> unit_hash("u-1") == unit_hash("u-1"), 0 <= unit_hash("u-1") < 1
    (True, True)
    """
    digest = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class ArmSplit:
    """Users to arms in proportion to the weights. Arm i takes the users whose ``unit_hash``
    lies in its slice of [0, 1) (slices in the order the arms are listed): changing weights
    moves only the users near the boundaries that moved.

    >>> split = ArmSplit(parse_arms("small=a:1,big=b:3"))
    >>> shares = [split.arm_of(f"user-{i}").name for i in range(4000)]
    >>> shares.count("big") / len(shares)   # 3/4 of them, within sampling error
    0.76075
    """

    def __init__(self, arms: Sequence[Arm]) -> None:
        if not arms:
            raise ValueError("arms: a split needs at least one arm")
        self.arms = tuple(arms)
        total = sum(a.weight for a in arms)
        bounds, acc = [], 0.0
        for a in arms[:-1]:
            acc += a.weight
            bounds.append(acc / total)
        self._bounds = bounds  # the last arm takes everything from the last bound up to 1

    def index_of(self, user_id: str) -> int:
        """The position of ``user_id``'s arm in ``arms``."""
        return bisect_right(self._bounds, unit_hash(user_id))

    def arm_of(self, user_id: str) -> Arm:
        return self.arms[self.index_of(user_id)]
