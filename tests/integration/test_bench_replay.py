"""``shelfq bench replay`` end to end on a slice of the synthetic log, with a tiny budget: the
figures have their shape, lie in [0, 1], the baselines are those of the same events, and every
reveal reached the join."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient

from shelfq.contracts.settings import Settings
from shelfq.evaluation.sequence_log import generate
from shelfq.evaluation.sequential import PREDICTORS, prequential, summary
from shelfq.bench.replay import ReplayBenchConfig, load

EVENTS = 300


def _bench_topics(settings: Settings) -> set[str]:
    return {t for t in AdminClient(settings.confluent_config()).list_topics(timeout=10).topics if t.startswith("bench-replay-")}


def test_bench_replay_scores_the_agent_beside_the_baselines_on_the_same_events(base_settings: Settings,
                                                                              tmp_path: Path) -> None:
    before = _bench_topics(base_settings)  # another run's, if one is going on
    log = tmp_path / "shop.jsonl"
    log.write_text("\n".join(generate(users=60, seed=3)) + "\n")
    env = {**os.environ, "SHELFQ_PARTITIONS": "3"}
    done = subprocess.run([sys.executable, "-m", "shelfq", "bench", "replay", str(log), "--limit", str(EVENTS),
                           "--rate", "20", "--json"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HR@10 agent" in done.stderr  # progress goes to stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])

    assert figures["events"] == EVENTS and figures["k"] == 10 and figures["second_half_from"] == EVENTS // 2
    assert set(figures["overall"]) == set(figures["second_half"]) == {"agent", *PREDICTORS}
    for part, n in (("overall", EVENTS), ("second_half", EVENTS - EVENTS // 2)):
        for name, row in figures[part].items():
            assert row["events"] == n, (part, name)
            assert 0 <= row["ndcg_at_10"] <= row["hr_at_10"] <= 1, (part, name)
            assert row["hr_ci95"][0] <= row["hr_at_10"] <= row["hr_ci95"][1]

    # The baselines are exactly those of the log's first EVENTS positive events.
    events, items = load(log, ReplayBenchConfig(limit=EVENTS), 1 << 20, print)
    assert figures["items"] == len(items) and figures["users"] == len({e.user for e in events})
    baselines = prequential(events)
    for name in PREDICTORS:
        assert figures["overall"][name] == summary(baselines[name]), name
        assert figures["second_half"][name] == summary(baselines[name], start=EVENTS // 2), name

    agent = figures["agent"]
    assert agent["slates"] + agent["slate_timeouts"] == EVENTS and agent["slates"] > EVENTS * 0.9
    assert agent["exploration"] == "greedy" and 0 <= agent["model_share"] <= 1
    assert 0 < agent["distinct_items_second_half"] <= len(items)
    # Every reveal became transitions (one per shown item), none was dead-lettered, and the
    # learner read them.
    assert figures["transitions"] == figures["transitions_expected"] >= EVENTS
    assert figures["streams_dead_letters"] == 0
    assert 0 < figures["learner_transitions"] <= figures["transitions"]
    # Its topics, Faust's own included, are gone.
    assert _bench_topics(base_settings) <= before
