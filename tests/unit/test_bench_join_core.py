"""``shelfq bench join --core-only``: the pure join timed on the benchmark's own events, no broker."""

from __future__ import annotations

import json

import pytest

from shelfq.bench.join import bench_traffic, measure_join_core
from shelfq.cli.main import main


def test_the_core_figures_are_there_and_every_transition_was_made() -> None:
    traffic = bench_traffic(1000, window_s=5.0, t0=1e6)
    figures = measure_join_core(traffic, partitions=6, window_s=5.0, now=1e6 + 100, repeats=1)
    assert figures["join_core_events"] == len(traffic.events)
    assert figures["join_core_us_per_event"] > 0 and figures["join_core_single_us_per_event"] > 0
    # Event times span 20 windows and the clock stops at the last: all but the last window's close.
    assert 0.5 * len(traffic.expected) < figures["join_core_transitions"] <= len(traffic.expected)


def test_core_only_needs_no_broker_and_prints_json(capsys: pytest.CaptureFixture) -> None:
    # Nothing listens on port 9: a run that touched the broker would fail.
    assert main(["bench", "join", "--core-only", "--events", "1000", "--json", "--bootstrap-servers", "127.0.0.1:9"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["join_core_us_per_event"] > 0 and figures["join_core_events"] >= 1000


def test_core_only_refuses_the_light_load_run(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "join", "--core-only", "--light-rate", "50", "--bootstrap-servers", "127.0.0.1:9"]) == 2
    assert "--light-rate needs the broker" in capsys.readouterr().err
