"""``shelfq bench replay``'s settings and log loading (no broker: the run itself is in
tests/integration/test_bench_replay.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelfq.contracts.errors import ConfigError
from shelfq.frontend.replay import ReplayError
from shelfq.bench.replay import ReplayBenchConfig, load
from shelfq.cli.main import main

LOG = """\
kind,ts,request_id,user_id,session_id,items,item_id
impression,10,r1,u1,s1,a|b,
click,11,r1,u1,s1,,b
impression,12,r2,u2,s2,c,
click,13,r2,u2,s2,,c
click,14,r2,u2,s2,,a
"""


@pytest.mark.parametrize("settings, message", [
    ({"rate": 0}, "--rate"), ({"rate": 5000}, "--rate"), ({"limit": 1}, "--limit"),
    ({"exploration": "boltzmann"}, "--exploration"), ({"user_gap_s": -1}, "user_gap_s"),
    ({"session_gap_s": 0}, "session_gap_s"), ({"slate_timeout_s": 0}, "slate_timeout_s"),
])
def test_impossible_settings_are_config_errors(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ReplayBenchConfig(**settings)


def test_load_gives_the_first_positive_events_and_every_item_named(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    events, items = load(path, ReplayBenchConfig(limit=2), 1 << 20, print)
    assert [(e.user, e.item) for e in events] == [("u1", "b"), ("u2", "c")]
    assert sorted(items) == ["a", "b", "c"]


def test_a_log_with_bad_lines_is_refused_unless_skip_bad(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(LOG + "click,nope,r3,u3,s3,,a\n")
    with pytest.raises(ReplayError, match="line 7: ts"):
        load(path, ReplayBenchConfig(), 1 << 20, print)
    said: list[str] = []
    events, _ = load(path, ReplayBenchConfig(skip_bad=True), 1 << 20, said.append)
    assert len(events) == 3 and "skipping 1 bad lines" in said[0]


def test_a_log_with_too_few_positive_events_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(LOG.splitlines()[0] + "\nclick,1,r1,u1,s1,,a\n")
    with pytest.raises(ReplayError, match="1 positive events"):
        load(path, ReplayBenchConfig(), 1 << 20, print)


def test_the_command_refuses_an_impossible_rate_before_touching_kafka(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "replay", "log.csv", "--rate", "-1"]) == 2
    assert "--rate" in capsys.readouterr().err
