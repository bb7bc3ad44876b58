"""Which version an agent serves (agents.serving): the newest without a decision, exactly the
decided one with one, and the loaded versions it keeps for a switch without a reload."""

from __future__ import annotations

from shelfq.agents.serving import ServedVersions


def test_without_a_decision_the_newest_serves_as_before_the_gate() -> None:
    book = ServedVersions()
    assert book.add("dqn", 1, "m1") == (1, "m1")
    assert book.add("dqn", 2, "m2") == (2, "m2")
    assert book.add("other", 7, "o7") == (7, "o7")  # policies are independent


def test_a_decision_pins_the_version_and_a_newer_one_waits_in_shadow() -> None:
    book = ServedVersions()
    assert book.decide("dqn", 2, good=[2]) is None  # decided before any model loaded (a restart)
    assert book.add("dqn", 1, "m1") is None  # not the decided one: nothing serves it
    assert book.add("dqn", 2, "m2") == (2, "m2")
    assert book.add("dqn", 3, "m3") is None
    assert book.decide("dqn", 3, good=[2, 3]) == (3, "m3")
    assert book.decide("dqn", 2, good=[2]) == (2, "m2")  # a rollback: no reload
    assert book.forget_decision("dqn") == (3, "m3")  # a tombstone: the newest again


def test_a_decided_version_not_on_the_topic_gives_way_to_the_newest_once_read_to_the_end() -> None:
    book = ServedVersions()
    book.decide("dqn", 5, good=[5])
    assert book.add("dqn", 6, "m6") is None
    assert book.read_to_end() == [("dqn", 6, "m6")]


def test_it_keeps_the_newest_few_the_decided_one_and_the_rollback_targets() -> None:
    book = ServedVersions(keep=2)
    book.decide("dqn", 1, good=[1])
    for v in range(1, 8):
        book.add("dqn", v, f"m{v}")
    assert sorted(book.loaded["dqn"]) == [1, 6, 7]
    book.decide("dqn", 7, good=[1, 3, 7])  # 3 is no longer loaded: a reload would be needed, not kept
    book.add("dqn", 8, "m8")
    assert sorted(book.loaded["dqn"]) == [1, 7, 8]
